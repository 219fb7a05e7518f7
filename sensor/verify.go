//go:build linux

package sensor

import (
	"os"

	"github.com/cilium/ebpf"
)

// ObjectProcess names the process programs in `agentfence doctor`, which
// loads them without attaching (enforcer.VerifySpec) to learn whether this
// kernel's verifier accepts them.
const ObjectProcess = "process"

// ProcessFallback is what the daemon does when the kernel refuses the
// process programs: it runs without them.
const ProcessFallback = "records carry only the pid, uid and comm the gate sees: no exe, argv, parent, container or pod"

// ProcessSpec is the process object as LoadProcessPrograms loads it with
// opts, and for a verification load. The maps it would share with the gate
// are the object's own there; the verifier sees the same shapes.
func ProcessSpec(opts ProcessOptions) (*ebpf.CollectionSpec, error) {
	spec, err := loadProcess()
	if err != nil {
		return nil, err
	}
	if opts.RingBufferSize != 0 {
		spec.Maps["proc_events"].MaxEntries = opts.RingBufferSize
	}
	if opts.GateEvents == nil {
		// Nobody reads a private copy of the gate's ring: the smallest
		// ring buffer (one page) will do.
		spec.Maps["gate_events"].MaxEntries = uint32(os.Getpagesize())
	}
	return spec, nil
}
