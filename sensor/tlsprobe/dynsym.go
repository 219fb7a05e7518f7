//go:build linux

package tlsprobe

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// exportedFuncs finds the functions of want that the file at path defines
// among its dynamic symbols (uprobes need an address in the file, which an
// import does not have), by the file offset a uprobe is placed at.
//
// It reads the two sections it needs and keeps only what it is asked for.
// debug/elf's DynamicSymbols, and cilium/ebpf's Executable finding a
// symbol by name, make every symbol of the file a Go value: for node's
// 75,000 dynamic and 110,000 static ones that was 65 MiB of heap, and the
// daemon's resident memory grew from 97 to 166 MiB while a session's first
// probes were placed.
func exportedFuncs(path string, want ...string) (map[string]uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("%s ELF: only 64-bit executables are probed", f.Class)
	}
	syms, strs := f.Section(".dynsym"), f.Section(".dynstr")
	if syms == nil || strs == nil || syms.Type != elf.SHT_DYNSYM {
		return map[string]uint64{}, nil // static: nothing exported
	}
	names, err := strs.Data() // a few MiB at most; read once
	if err != nil {
		return nil, fmt.Errorf("read .dynstr: %w", err)
	}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
	}
	out := map[string]uint64{}
	var entry [elf.Sym64Size]byte
	// Buffered: the section reader reads the file at each call, and one
	// system call per 24-byte entry was 75,000 of them for node.
	r := bufio.NewReaderSize(syms.Open(), 64<<10)
	for len(out) < len(wanted) {
		if _, err := io.ReadFull(r, entry[:]); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("read .dynsym: %w", err)
		}
		name, info := f.ByteOrder.Uint32(entry[0:4]), entry[4]
		shndx, value := elf.SectionIndex(f.ByteOrder.Uint16(entry[6:8])), f.ByteOrder.Uint64(entry[8:16])
		if shndx == elf.SHN_UNDEF || elf.ST_TYPE(info) != elf.STT_FUNC {
			continue
		}
		b := cString(names, name)
		if !wanted[string(b)] { // no copy: the compiler looks the bytes up
			continue
		}
		s := string(b)
		off, err := fileOffset(f, value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
		out[s] = off
	}
	return out, nil
}

// cString is the NUL-terminated string at off in a string table, nil if
// there is none.
func cString(table []byte, off uint32) []byte {
	if int(off) >= len(table) {
		return nil
	}
	if n := bytes.IndexByte(table[off:], 0); n >= 0 {
		return table[off : int(off)+n]
	}
	return nil
}
