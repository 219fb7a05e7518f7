// Package cgroupmeta derives container, pod and systemd unit identity from a
// cgroup v2 path. It is pure string work: no runtime sockets, no API server,
// so it stays correct when those are down and costs nothing per event.
package cgroupmeta

import (
	"strings"
)

// Runtime names the container runtime that created a cgroup.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
	RuntimePodman     = "podman"
	// RuntimeUnknown is used for kubelet cgroupfs-driver leaves, whose name
	// is the bare container id with no runtime prefix.
	RuntimeUnknown = "unknown"
)

// Meta is what a cgroup path says about its members. Zero fields mean the
// path says nothing about them.
type Meta struct {
	ContainerID string `json:"container_id,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
	PodUID      string `json:"pod_uid,omitempty"`
	QoS         string `json:"qos,omitempty"` // guaranteed, burstable, besteffort
	// Unit is the innermost systemd unit (.service or .scope) that is not a
	// container scope, e.g. "nginx.service" or "session-4.scope".
	Unit string `json:"unit,omitempty"`
}

// Parse interprets a cgroup path as found in /proc/<pid>/cgroup ("0::" line)
// or below the cgroup2 mount. Unknown layouts yield the zero Meta.
func Parse(path string) Meta {
	var m Meta
	inKube := false
	for _, c := range strings.Split(path, "/") {
		if c == "" {
			continue
		}
		switch {
		case c == "kubepods" || c == "kubepods.slice":
			inKube = true
			if m.QoS == "" {
				// Pods directly under kubepods are Guaranteed; the
				// burstable/besteffort levels below override this.
				m.QoS = "guaranteed"
			}
			continue
		case inKube && (c == "burstable" || c == "besteffort"):
			m.QoS = c
			continue
		case strings.HasPrefix(c, "kubepods-") && strings.HasSuffix(c, ".slice"):
			inKube = true
			parseKubeSlice(strings.TrimSuffix(strings.TrimPrefix(c, "kubepods-"), ".slice"), &m)
			continue
		case inKube && strings.HasPrefix(c, "pod") && m.PodUID == "":
			if uid := strings.TrimPrefix(c, "pod"); validPodUID(uid) {
				m.PodUID = uid
				continue
			}
		}
		if m.ContainerID != "" {
			// Nested cgroups inside a container (systemd in the container,
			// init.scope under a cgroup namespace) keep the outer identity.
			continue
		}
		if id, rt, ok := containerScope(c); ok {
			m.ContainerID, m.Runtime = id, rt
			m.Unit = ""
			continue
		}
		if inKube && m.PodUID != "" && validContainerID(c) {
			m.ContainerID, m.Runtime = c, RuntimeUnknown
			continue
		}
		if strings.HasSuffix(c, ".service") || strings.HasSuffix(c, ".scope") {
			m.Unit = c
		}
	}
	// cgroupfs docker layout: /docker/<id>
	if m.ContainerID == "" {
		if i := strings.Index(path, "/docker/"); i >= 0 {
			rest := path[i+len("/docker/"):]
			if j := strings.IndexByte(rest, '/'); j >= 0 {
				rest = rest[:j]
			}
			if validContainerID(rest) {
				m.ContainerID, m.Runtime, m.Unit = rest, RuntimeDocker, ""
			}
		}
	}
	return m
}

// parseKubeSlice handles the systemd-driver slice names after "kubepods-":
// "burstable", "besteffort", "pod<uid>", "burstable-pod<uid>".
func parseKubeSlice(s string, m *Meta) {
	if m.QoS == "" {
		m.QoS = "guaranteed"
	}
	for _, q := range []string{"burstable", "besteffort"} {
		if s == q {
			m.QoS = q
			return
		}
		if strings.HasPrefix(s, q+"-") {
			m.QoS = q
			s = s[len(q)+1:]
			break
		}
	}
	if uid, ok := strings.CutPrefix(s, "pod"); ok {
		// systemd forbids '-' inside a slice name component, so the kubelet
		// writes the UID with underscores.
		uid = strings.ReplaceAll(uid, "_", "-")
		if validPodUID(uid) {
			m.PodUID = uid
		}
	}
}

var scopePrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd},
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker},
	{"libpod-", RuntimePodman},
}

func containerScope(c string) (id, runtime string, ok bool) {
	base, ok := strings.CutSuffix(c, ".scope")
	if !ok {
		return "", "", false
	}
	for _, p := range scopePrefixes {
		if id, ok := strings.CutPrefix(base, p.prefix); ok && validContainerID(id) {
			return id, p.runtime, true
		}
	}
	// crio-conmon-<id>.scope is the monitor, not the container, and fails
	// validContainerID above because of "conmon-".
	return "", "", false
}

// validContainerID accepts the 64-hex-digit ids every OCI runtime here uses.
func validContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// validPodUID accepts RFC 4122 UUIDs and the 32-hex-digit hashes the kubelet
// uses as UIDs of static (manifest) pods.
func validPodUID(s string) bool {
	switch len(s) {
	case 32:
		for i := 0; i < len(s); i++ {
			if !isHex(s[i]) {
				return false
			}
		}
		return true
	case 36:
		for i := 0; i < len(s); i++ {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if s[i] != '-' {
					return false
				}
			} else if !isHex(s[i]) {
				return false
			}
		}
		return true
	}
	return false
}

func isHex(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'f'
}
