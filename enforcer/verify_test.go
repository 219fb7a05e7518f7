package enforcer

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/agentfence/agentfence/internal/privtest"
)

// TestVerifyObjects: on the machines CI runs on, every object the daemon
// loads passes the verifier, and each load is timed.
func TestVerifyObjects(t *testing.T) {
	privtest.RequireRoot(t)
	want := map[string]struct {
		programs int
		required bool
	}{ObjectGate: {8, true}, ObjectHostnames: {3, false}, ObjectTaskLister: {1, false}, ObjectSocketFamilies: {1, false}, ObjectPodHold: {2, false}}
	checks := VerifyObjects(VerifyOptions{})
	if len(checks) != len(want) {
		t.Fatalf("VerifyObjects returned %d checks, want %d: %+v", len(checks), len(want), checks)
	}
	for _, c := range checks {
		w, ok := want[c.Name]
		if !ok {
			t.Errorf("unexpected object %q", c.Name)
			continue
		}
		t.Logf("%s: %d programs, %v, %d insns", c.Name, c.Programs, c.Duration, c.Insns)
		if c.Name == ObjectSocketFamilies {
			// A hook layer's programs (socket_create, ptrace_access_check,
			// ptrace_traceme, file_receive) join the syscall-exit one; the
			// BPF LSM's only where it runs. Below it, the reason is kept.
			switch {
			case c.Layer == FamiliesLSM && BPFLSMActive(), c.Layer == FamiliesFmodRet:
				w.programs = 5
			case c.Layer == FamiliesSyscallExit && c.LayerErr != nil:
			default:
				t.Errorf("%s: layer %q, stronger refused with %v, bpf LSM active %v", c.Name, c.Layer, c.LayerErr, BPFLSMActive())
			}
		}
		if c.Err != nil {
			t.Errorf("%s refused: %v", c.Name, c.Err)
		}
		if c.Duration <= 0 || c.Programs != w.programs || c.Required != w.required {
			t.Errorf("%s = %+v, want %d programs, required %v, a duration", c.Name, c, w.programs, w.required)
		}
		if !c.Required && c.Fallback == "" {
			t.Errorf("%s is optional but names no fallback", c.Name)
		}
	}
}

// TestVerifyObjectsBroken forces each object through the failure path of
// the real load: the verifier refuses it, the error keeps the
// *ebpf.VerifierError and only the tail of its log, and the other objects
// still load.
func TestVerifyObjectsBroken(t *testing.T) {
	privtest.RequireRoot(t)
	for _, broken := range []string{ObjectGate, ObjectHostnames, ObjectTaskLister, ObjectSocketFamilies} {
		for _, c := range VerifyObjects(VerifyOptions{Break: broken}) {
			if c.Name != broken {
				if c.Err != nil {
					t.Errorf("break %s: %s refused too: %v", broken, c.Name, c.Err)
				}
				continue
			}
			var ve *ebpf.VerifierError
			if !errors.As(c.Err, &ve) {
				t.Errorf("break %s: error %v is not a verifier error", broken, c.Err)
				continue
			}
			msg := c.Err.Error()
			if !strings.Contains(msg, "R9 !read_ok") || !strings.HasPrefix(msg, "program ") {
				t.Errorf("break %s: message does not name the program and the verifier's reason:\n%s", broken, msg)
			}
			if n := strings.Count(msg, "\n"); n > verifierTailLines+1 {
				t.Errorf("break %s: message has %d lines, want the log's tail:\n%s", broken, n, msg)
			}
			if c.Duration <= 0 {
				t.Errorf("break %s: no duration", broken)
			}
		}
	}
}

func TestTailVerifierErrorPassesOthers(t *testing.T) {
	err := errors.New("plain")
	if got := tailVerifierError(err); got != err {
		t.Errorf("tailVerifierError(plain) = %v", got)
	}
}
