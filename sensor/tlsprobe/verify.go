//go:build linux

package tlsprobe

import (
	"os"

	"github.com/cilium/ebpf"

	"github.com/agentfence/agentfence/internal/procfs"
)

// Object names the TLS probes in `agentfence doctor`, which loads them
// without attaching to learn whether this kernel's verifier accepts them.
const Object = "tls_probes"

// Fallback is what the daemon does when the kernel refuses them.
const Fallback = "no http records: members' HTTPS calls are not read; their connects are judged and recorded as before"

// Spec is the TLS object for a verification load: the gate's ring is a
// private copy nobody reads, so the smallest will do.
func Spec() (*ebpf.CollectionSpec, error) {
	spec, err := loadTls()
	if err != nil {
		return nil, err
	}
	spec.Maps["gate_events"].MaxEntries = uint32(os.Getpagesize())
	return spec, nil
}

// RingsHeld counts the TLS probes' event rings that process pid holds:
// how a test tells that the probes are loaded there, or freed.
func RingsHeld(pid int) (int, error) {
	spec, err := loadTls()
	if err != nil {
		return 0, err
	}
	ring := spec.Maps["tls_events"]
	maps, err := procfs.BPFMaps(pid)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range maps {
		if ebpf.MapType(m.Type) == ring.Type && m.MaxEntries == ring.MaxEntries {
			n++
		}
	}
	return n, nil
}
