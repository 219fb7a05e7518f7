//go:build linux

package tlsprobe

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"testing"
)

// TestFuncTableMatchesGosym: every function of the unstripped client
// whose name is its own starts and ends where debug/gosym says.
func TestFuncTableMatchesGosym(t *testing.T) {
	f, err := elf.Open(goClient(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pcln, err := sectionData(f.Section(".gopclntab"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := gosym.NewTable(nil, gosym.NewLineTable(pcln, 0))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, fn := range ref.Funcs {
		seen[fn.Name]++
	}
	var names []string
	var want []funcSpan
	for _, fn := range ref.Funcs {
		if seen[fn.Name] == 1 {
			names, want = append(names, fn.Name), append(want, funcSpan{fn.Entry, fn.End})
		}
	}
	if len(names) < 1000 {
		t.Fatalf("%d functions in the client", len(names))
	}
	tab, err := newFuncTable(pcln)
	if err != nil {
		t.Fatal(err)
	}
	got, found := tab.find(names)
	for i, name := range names {
		if !found[i] || got[i] != want[i] {
			t.Fatalf("%s: %+v (found %v), debug/gosym says %+v", name, got[i], found[i], want[i])
		}
	}
}

// FuzzFuncTable: no table, however made, makes the reader panic or look
// outside it.
func FuzzFuncTable(f *testing.F) {
	f.Add(funcTableOf(0xfffffff1, []string{goWrite, goRead, goClose}))
	f.Add(funcTableOf(0xfffffffa, []string{goRead, "main.main"}))
	f.Fuzz(func(t *testing.T, pcln []byte) {
		tab, err := newFuncTable(pcln)
		if err != nil {
			return
		}
		spans, found := tab.find([]string{goWrite, goRead, goClose})
		if len(spans) != 3 || len(found) != 3 {
			t.Fatalf("%d spans, %d found for 3 names", len(spans), len(found))
		}
	})
}

// funcTableOf lays out a function table of the format magic names with
// the functions named, 64 bytes apart.
func funcTableOf(magic uint32, names []string) []byte {
	abs := magic == 0xfffffffa
	field := 4
	nameWord, funcWord := 3, 7
	if abs {
		field, nameWord, funcWord = 8, 2, 6
	}
	hdr := 8 + 8*(funcWord+1)
	var nametab []byte
	nameOffs := make([]int, len(names))
	for i, n := range names {
		nameOffs[i] = len(nametab)
		nametab = append(append(nametab, n...), 0)
	}
	funcs := hdr + len(nametab)
	tabLen := (len(names) + 1) * 2 * field
	b := make([]byte, funcs+tabLen+len(names)*(field+4))
	binary.LittleEndian.PutUint32(b, magic)
	b[6], b[7] = 1, 8
	binary.LittleEndian.PutUint64(b[8:], uint64(len(names)))
	binary.LittleEndian.PutUint64(b[8+8*nameWord:], uint64(hdr))
	binary.LittleEndian.PutUint64(b[8+8*funcWord:], uint64(funcs))
	copy(b[hdr:], nametab)
	put := func(at, v int) {
		if field == 8 {
			binary.LittleEndian.PutUint64(b[at:], uint64(v))
		} else {
			binary.LittleEndian.PutUint32(b[at:], uint32(v))
		}
	}
	for i := range names {
		off := tabLen + i*(field+4)
		put(funcs+2*i*field, 64*i)
		put(funcs+(2*i+1)*field, off)
		binary.LittleEndian.PutUint32(b[funcs+off+field:], uint32(nameOffs[i]))
	}
	put(funcs+2*len(names)*field, 64*len(names))
	return b
}

// TestFuncTableFormats: both layouts the reader takes, as funcTableOf
// lays them out: Go 1.16's addresses and the offsets of 1.18 and later.
func TestFuncTableFormats(t *testing.T) {
	for _, magic := range []uint32{0xfffffffa, 0xfffffff0, 0xfffffff1} {
		tab, err := newFuncTable(funcTableOf(magic, []string{goWrite, goRead, goClose}))
		if err != nil {
			t.Fatalf("%#x: %v", magic, err)
		}
		spans, found := tab.find([]string{goClose, "main.main", goRead})
		if want := []funcSpan{{128, 192}, {}, {64, 128}}; !found[0] || found[1] || !found[2] || spans[0] != want[0] || spans[2] != want[2] {
			t.Errorf("%#x: %+v %v, want %+v", magic, spans, found, want)
		}
		if tab.abs != (magic == 0xfffffffa) {
			t.Errorf("%#x: addresses %v", magic, tab.abs)
		}
	}
}
