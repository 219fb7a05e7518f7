package cgroupv2

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFind: a pod's cgroup under either kubelet driver is its own
// directory, not a container's below it; a container's is the deepest.
func TestFind(t *testing.T) {
	root := t.TempDir()
	const uid = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	const ctr = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	systemd := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2a3b_4d5e_4f60_8a9b_0c1d2e3f4a5b.slice"
	cgroupfs := "kubepods/besteffort/pod" + uid
	for _, tc := range []struct{ tree, pod, container string }{
		{systemd + "/cri-containerd-" + ctr + ".scope", systemd, systemd + "/cri-containerd-" + ctr + ".scope"},
		{cgroupfs + "/" + ctr, cgroupfs, cgroupfs + "/" + ctr},
		{"kubepods.slice/kubepods-pod6f1c2a3b_4d5e_4f60_8a9b_0c1d2e3f4a5b.slice/crio-" + ctr + ".scope",
			"kubepods.slice/kubepods-pod6f1c2a3b_4d5e_4f60_8a9b_0c1d2e3f4a5b.slice",
			"kubepods.slice/kubepods-pod6f1c2a3b_4d5e_4f60_8a9b_0c1d2e3f4a5b.slice/crio-" + ctr + ".scope"},
	} {
		dir := filepath.Join(root, tc.tree)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		m := Manager{Root: root}
		if p, id, err := m.FindPod(uid); err != nil || p != filepath.Join(root, tc.pod) || id == 0 {
			t.Errorf("%s: pod at %s %d %v", tc.tree, p, id, err)
		}
		if p, _, err := m.FindContainer(ctr[:12]); err != nil || p != filepath.Join(root, tc.container) {
			t.Errorf("%s: container at %s %v", tc.tree, p, err)
		}
		if _, _, err := m.FindPod("00000000-0000-4000-8000-000000000000"); err == nil {
			t.Errorf("%s: found a pod that is not there", tc.tree)
		}
		os.RemoveAll(filepath.Join(root, "kubepods.slice"))
		os.RemoveAll(filepath.Join(root, "kubepods"))
	}
}
