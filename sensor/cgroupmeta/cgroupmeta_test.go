package cgroupmeta

import (
	"strings"
	"testing"
)

const (
	cid  = "3c5f2ba6d2d1a6a7d5e8b0f2a9f6b1c4d7e0a3b6c9d2e5f8a1b4c7d0e3f6a9b2"
	cid2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	uid  = "8f4b1e62-2c3d-4a5b-9c8d-7e6f5a4b3c2d"
	uidU = "8f4b1e62_2c3d_4a5b_9c8d_7e6f5a4b3c2d"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		path string
		want Meta
	}{
		{"/", Meta{}},
		{"", Meta{}},
		{"/system.slice/nginx.service", Meta{Unit: "nginx.service"}},
		{"/system.slice/system-getty.slice/getty@tty1.service", Meta{Unit: "getty@tty1.service"}},
		{"/user.slice/user-1000.slice/session-4.scope", Meta{Unit: "session-4.scope"}},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/agent.service", Meta{Unit: "agent.service"}},
		{"/init.scope", Meta{Unit: "init.scope"}},
		// containerd, systemd driver
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Meta{ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid, QoS: "burstable"}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Meta{ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid, QoS: "besteffort"}},
		{"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope",
			Meta{ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid, QoS: "guaranteed"}},
		// the pause container's slice alone
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice",
			Meta{PodUID: uid, QoS: "burstable"}},
		// CRI-O, systemd driver; conmon is not the container
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-" + cid + ".scope",
			Meta{ContainerID: cid, Runtime: RuntimeCRIO, PodUID: uid, QoS: "burstable"}},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope",
			Meta{PodUID: uid, QoS: "burstable", Unit: "crio-conmon-" + cid + ".scope"}},
		// cgroupfs driver: bare container id leaf
		{"/kubepods/burstable/pod" + uid + "/" + cid,
			Meta{ContainerID: cid, Runtime: RuntimeUnknown, PodUID: uid, QoS: "burstable"}},
		{"/kubepods/pod" + uid + "/" + cid,
			Meta{ContainerID: cid, Runtime: RuntimeUnknown, PodUID: uid, QoS: "guaranteed"}},
		// static pod: hash uid
		{"/kubepods/besteffort/pod0f1e2d3c4b5a69788796a5b4c3d2e1f0/" + cid,
			Meta{ContainerID: cid, Runtime: RuntimeUnknown, PodUID: "0f1e2d3c4b5a69788796a5b4c3d2e1f0", QoS: "besteffort"}},
		// docker, both drivers
		{"/system.slice/docker-" + cid + ".scope", Meta{ContainerID: cid, Runtime: RuntimeDocker}},
		{"/docker/" + cid, Meta{ContainerID: cid, Runtime: RuntimeDocker}},
		{"/docker/" + cid + "/nested", Meta{ContainerID: cid, Runtime: RuntimeDocker}},
		{"/machine.slice/libpod-" + cid + ".scope/container", Meta{ContainerID: cid, Runtime: RuntimePodman}},
		// systemd inside a container keeps the outer container identity
		{"/system.slice/docker-" + cid + ".scope/system.slice/sshd.service", Meta{ContainerID: cid, Runtime: RuntimeDocker}},
		{"/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope/cri-containerd-" + cid2 + ".scope",
			Meta{ContainerID: cid, Runtime: RuntimeContainerd, PodUID: uid, QoS: "guaranteed"}},
		// near misses
		{"/system.slice/docker-" + cid[:12] + ".scope", Meta{Unit: "docker-" + cid[:12] + ".scope"}},
		{"/system.slice/docker.service", Meta{Unit: "docker.service"}},
		{"/docker/notanid", Meta{}},
		{"/kubepods/burstable/podnot-a-uid/" + cid, Meta{QoS: "burstable"}},
		{"/pod" + uid + "/" + cid, Meta{}}, // not under kubepods
	} {
		if got := Parse(tc.path); got != tc.want {
			t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.path, got, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope")
	f.Add("/kubepods/burstable/pod" + uid + "/" + cid)
	f.Add("/docker/" + cid)
	f.Add("/system.slice/foo.service")
	f.Fuzz(func(t *testing.T, path string) {
		m := Parse(path)
		if m.ContainerID != "" && !validContainerID(m.ContainerID) {
			t.Fatalf("invalid container id %q from %q", m.ContainerID, path)
		}
		if m.ContainerID != "" && m.Runtime == "" {
			t.Fatalf("container without runtime from %q", path)
		}
		if m.PodUID != "" && !validPodUID(m.PodUID) {
			t.Fatalf("invalid pod uid %q from %q", m.PodUID, path)
		}
		if m.ContainerID != "" && m.Unit != "" {
			t.Fatalf("container and unit from %q: %+v", path, m)
		}
		if m.Unit != "" && !strings.Contains(path, m.Unit) {
			t.Fatalf("unit %q not in %q", m.Unit, path)
		}
		if Parse(path) != m {
			t.Fatal("not deterministic")
		}
	})
}
