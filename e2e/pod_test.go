package e2e

import (
	"encoding/json"
	"path/filepath"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// TestBindPod: `session bind --pod UID` binds the pod's cgroup as the
// kubelet lays it out (systemd driver), so a process in any of its
// containers, there before the bind or started after it, is judged by the
// session's scope.
func TestBindPod(t *testing.T) {
	d := startDaemon(t)
	const uid = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	ctr := kubePods(t, uid)[0]
	pod := filepath.Dir(ctr)
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	before := kerneltest.Start(t, ctr, kerneltest.Options{}, true, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other})
	if res := before.Next(); res.Outcome() != kerneltest.Ready {
		t.Fatalf("probe: %+v", res)
	}

	s := d.openSession(t, "--intent", "pod", "--allow", "tcp://"+allowed.String())
	out, stderr, code := d.cli(t, nil, "session", "bind", s.ID, "--pod", uid)
	if code != 0 {
		t.Fatalf("bind --pod: exit %d: %s", code, stderr)
	}
	var bound v1.Session
	if err := json.Unmarshal([]byte(out), &bound); err != nil {
		t.Fatalf("bind output %q: %v", out, err)
	}
	if bound.Binding.PodUID != uid || bound.Binding.ContainerCgroup != pod {
		t.Errorf("binding %+v, want the pod's cgroup %s", bound.Binding, pod)
	}
	before.Go()
	if got := []string{before.Next().Outcome(), before.Next().Outcome()}; got[0] != "ok" || got[1] != "EPERM" {
		t.Errorf("a container process there before the bind: %v, want ok, EPERM", got)
	}
	expectResults(t, kerneltest.Run(t, ctr, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other}), "ok", "EPERM")

	// Bad input changes nothing.
	for _, args := range [][]string{{"--pod", "not-a-uid"}, {"--pod", "00000000-0000-4000-8000-000000000000"}, {"--pod", uid, "--pid", "1"}} {
		if _, _, code := d.cli(t, nil, append([]string{"session", "bind", s.ID}, args...)...); code == 0 {
			t.Errorf("bind %v succeeded", args)
		}
	}
}
