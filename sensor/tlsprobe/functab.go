//go:build linux

package tlsprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// funcTable reads a Go function table (.gopclntab, Go 1.16 and later, 64
// bits) in place: where the functions of a few names start and end.
// debug/gosym makes every function of the table a Go value first, some
// 330 bytes each with its name (20 MB and 40 ms for a 68 MB test binary's
// 62,354), and the table is a member's file: a crafted one of maxSection
// could list millions.
type funcTable struct {
	abs     bool   // Go 1.16 and 1.17: entries are addresses; later, offsets from runtime.text
	field   uint64 // bytes of a functab field: 8 (1.16), 4 (1.18 and later)
	nfunc   uint64
	names   []byte // funcnametab
	functab []byte // nfunc+1 (entry, funcoff) pairs, the last entry the end of the last function
	funcs   []byte // what a funcoff counts from: each function's _func, its nameOff after the entry
}

// funcSpan is where a function starts and ends, as the table states it:
// an address (Go 1.16, 1.17) or an offset from runtime.text.
type funcSpan struct{ entry, end uint64 }

func newFuncTable(pcln []byte) (*funcTable, error) {
	if len(pcln) < 8 || pcln[7] != 8 {
		return nil, errors.New("function table: not a 64-bit one")
	}
	t := &funcTable{}
	var nameWord, funcWord int // header words after the magic, pad and sizes
	switch magic := binary.LittleEndian.Uint32(pcln); magic {
	case 0xfffffffa: // Go 1.16, 1.17
		t.abs, t.field, nameWord, funcWord = true, 8, 2, 6
	case 0xfffffff0, 0xfffffff1: // Go 1.18, 1.20
		t.field, nameWord, funcWord = 4, 3, 7
	default:
		return nil, fmt.Errorf("function table: magic %#x is not Go 1.16's or later", magic)
	}
	if len(pcln) < 8+8*(funcWord+1) {
		return nil, errors.New("function table: header cut short")
	}
	word := func(i int) uint64 { return binary.LittleEndian.Uint64(pcln[8+8*i:]) }
	size := uint64(len(pcln))
	t.nfunc = word(0)
	names, funcs := word(nameWord), word(funcWord)
	if names > size || funcs > size || t.nfunc >= (size-funcs)/(2*t.field) {
		return nil, fmt.Errorf("function table: %d functions do not fit its %d bytes", t.nfunc, size)
	}
	t.names = pcln[names:]
	t.funcs = pcln[funcs:]
	t.functab = t.funcs[:(t.nfunc+1)*2*t.field]
	return t, nil
}

// at is the i-th functab field.
func (t *funcTable) at(i uint64) uint64 {
	if t.field == 8 {
		return binary.LittleEndian.Uint64(t.functab[i*8:])
	}
	return uint64(binary.LittleEndian.Uint32(t.functab[i*4:]))
}

// find returns the spans of the functions named, in order; false for a
// name the table does not have. One pass, nothing kept of the others.
func (t *funcTable) find(names []string) ([]funcSpan, []bool) {
	want := make(map[string]int, len(names))
	for i, n := range names {
		want[n] = i
	}
	spans, found := make([]funcSpan, len(names)), make([]bool, len(names))
	left := len(want)
	for i := uint64(0); i < t.nfunc && left > 0; i++ {
		off := t.at(2*i + 1)
		if off > uint64(len(t.funcs)) || uint64(len(t.funcs))-off < t.field+4 {
			continue
		}
		nameOff := binary.LittleEndian.Uint32(t.funcs[off+t.field:])
		k, ok := want[string(cString(t.names, nameOff))] // no copy: the compiler looks the bytes up
		if !ok || found[k] {
			continue
		}
		spans[k], found[k] = funcSpan{entry: t.at(2 * i), end: t.at(2*i + 2)}, true
		left--
	}
	return spans, found
}
