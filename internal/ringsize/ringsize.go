// Package ringsize keeps a BPF object's ring buffers the size of the rings
// it is given. A ring's size is no part of its layout, but the kernel and
// cilium/ebpf refuse a pinned or replacement map whose size differs from
// the spec's: without this, a node upgraded across a change of ring size
// would refuse the rings its running programs write to.
package ringsize

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// FromPins sizes each ring buffer of spec pinned by name in dir as the
// pinned one.
func FromPins(spec *ebpf.CollectionSpec, dir string) error {
	for _, m := range spec.Maps {
		if m.Type != ebpf.RingBuf || m.Pinning != ebpf.PinByName {
			continue
		}
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, m.Name), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pinned ring %s: %w", m.Name, err)
		}
		m.MaxEntries = pinned.MaxEntries()
		pinned.Close()
	}
	return nil
}

// FromReplacements sizes each ring buffer of spec that repl replaces as
// its replacement.
func FromReplacements(spec *ebpf.CollectionSpec, repl map[string]*ebpf.Map) {
	for name, r := range repl {
		if m, ok := spec.Maps[name]; ok && m.Type == ebpf.RingBuf && r != nil {
			m.MaxEntries = r.MaxEntries()
		}
	}
}
