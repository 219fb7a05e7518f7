package enforcer

import (
	"errors"

	"github.com/cilium/ebpf"
)

// batchSize is the number of entries read per system call by each.
const batchSize = 512

// each calls fn for every entry of the hash map m, reading batchSize
// entries per BPF_MAP_LOOKUP_BATCH (Linux 5.6+) rather than walking it with
// two system calls per entry: a walk of the 65,536-entry pid table costs
// milliseconds that way. The pointers passed to fn are valid during the
// call only.
func each[K, V any](m *ebpf.Map, fn func(k *K, v *V)) error {
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(&keys[i], &vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
