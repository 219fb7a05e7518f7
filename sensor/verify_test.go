//go:build linux

package sensor_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/sensor"
)

// TestVerifyProcessSpec: the process object the daemon loads passes this
// kernel's verifier unattached, and a broken copy fails it with the
// verifier's reason.
func TestVerifyProcessSpec(t *testing.T) {
	privtest.RequireRoot(t)
	for _, broken := range []bool{false, true} {
		spec, err := sensor.ProcessSpec(sensor.ProcessOptions{RingBufferSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		c := enforcer.ObjectCheck{Name: sensor.ObjectProcess}
		enforcer.VerifySpec(&c, spec, nil, nil, broken)
		t.Logf("broken=%v: %d programs, %v, %d insns, err %v", broken, c.Programs, c.Duration, c.Insns, c.Err)
		if c.Programs != 4 || c.Duration <= 0 {
			t.Errorf("broken=%v: %+v, want 4 programs and a duration", broken, c)
		}
		var ve *ebpf.VerifierError
		switch {
		case !broken && c.Err != nil:
			t.Errorf("process programs refused: %v", c.Err)
		case broken && (!errors.As(c.Err, &ve) || !strings.Contains(c.Err.Error(), "R9 !read_ok")):
			t.Errorf("broken copy: err = %v, want the verifier refusing R9", c.Err)
		}
	}
}
