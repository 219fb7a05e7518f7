//go:build linux

package sensor

import (
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
// opts, for a verification load. The maps it would share with the gate
// are the object's own here; the verifier sees the same shapes.
func ProcessSpec(opts ProcessOptions) (*ebpf.CollectionSpec, error) {
	spec, err := loadProcess()
	if err != nil {
		return nil, err
	}
	if opts.RingBufferSize != 0 {
		spec.Maps["proc_events"].MaxEntries = opts.RingBufferSize
	}
	return spec, nil
}
