//go:build linux

package tlsprobe

import (
	"bytes"
	"compress/zlib"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestCompressedSectionBomb: a member's Go executable whose compressed
// sections inflate to twice maxSection (a 256 KiB zlib stream of zeros)
// costs the daemon no more than its honest copy. In place of DWARF's
// entries, the offsets come from the table; in place of its symbol table,
// the file is refused. debug/elf inflated such a section whole.
func TestCompressedSectionBomb(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("Go's crypto/tls is probed on amd64 and arm64")
	}
	client := goClient(t, "client")
	honest, err := inspectGo(client)
	if err != nil || !honest.fromDWARF {
		t.Fatalf("the honest client: %+v, %v", honest, err)
	}
	bomb := zlibBomb(t, 2*maxSection)

	info := withSection(t, client, ".debug_info", bomb)
	var g *goTLS
	if alloc := allocated(func() { g, err = inspectGo(info) }); alloc > maxSection/2 {
		t.Errorf("looking at the file allocated %d MiB", alloc>>20)
	}
	if err != nil {
		t.Fatalf("a bomb in place of DWARF's entries: %v", err)
	}
	if g.fromDWARF || g.offsets != honest.offsets || g.write != honest.write {
		t.Errorf("a bomb in place of DWARF's entries: %+v, want the table's offsets and %+v", g, honest)
	}

	symtab := withSection(t, client, ".symtab", bomb)
	if alloc := allocated(func() { _, err = inspectGo(symtab) }); alloc > maxSection/2 {
		t.Errorf("looking at the file allocated %d MiB", alloc>>20)
	}
	if err == nil || !strings.Contains(err.Error(), ".symtab") {
		t.Errorf("a bomb in place of the symbol table: %v, want the file refused", err)
	}
	if _, err := exportedFuncs(symtab, opensslFuncs...); err == nil {
		t.Error("exportedFuncs took the file with a bomb in place of its symbol table")
	}
}

// TestScanSymbols: scanSymbols reads the unstripped client's symbol
// table as debug/elf does (which leaves out the null entry).
func TestScanSymbols(t *testing.T) {
	f, err := elf.Open(goClient(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var got []elf.Symbol
	err = scanSymbols(f, f.Section(".symtab"), func(name []byte, info byte, shndx elf.SectionIndex, value uint64) bool {
		got = append(got, elf.Symbol{Name: string(name), Info: info, Section: shndx, Value: value})
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want)+1 || len(want) < 1000 {
		t.Fatalf("%d symbols, debug/elf reads %d", len(got), len(want))
	}
	for i, w := range want {
		if g := got[i+1]; g.Name != w.Name || g.Info != w.Info || g.Section != w.Section || g.Value != w.Value {
			t.Fatalf("symbol %d: %+v, debug/elf reads %+v", i+1, g, w)
		}
	}
}

// TestFunctionTableBounds: a function table that lists more functions
// than its bytes hold, or is not Go 1.16's or later, is refused, as a Go
// executable the probes cannot take.
func TestFunctionTableBounds(t *testing.T) {
	client := goClient(t, "client")
	var many [8]byte
	binary.LittleEndian.PutUint64(many[:], 1<<40)
	_, err := inspectGo(patched(t, client, ".gopclntab", 8, many[:]))
	if err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("2^40 functions: %v", err)
	}
	// A Go executable the probes cannot take: Uncovered names it, and
	// the daemon writes a tls_uncovered record.
	var gerr *GoError
	if !errors.As(err, &gerr) {
		t.Errorf("2^40 functions: %T, want a *GoError", err)
	}
	old := []byte{0xfb, 0xff, 0xff, 0xff} // Go 1.2's
	if _, err := inspectGo(patched(t, client, ".gopclntab", 0, old)); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("Go 1.2's table: %v", err)
	}
}

// zlibBomb is an ELF compressed section's contents (Elf64_Chdr, then the
// zlib stream) inflating to size zero bytes.
func zlibBomb(t *testing.T, size uint64) []byte {
	t.Helper()
	var b bytes.Buffer
	hdr := [24]byte{}
	binary.LittleEndian.PutUint32(hdr[0:], uint32(elf.COMPRESS_ZLIB))
	binary.LittleEndian.PutUint64(hdr[8:], size)
	binary.LittleEndian.PutUint64(hdr[16:], 1)
	b.Write(hdr[:])
	z, _ := zlib.NewWriterLevel(&b, zlib.BestCompression)
	zeros := make([]byte, 1<<20)
	for range size >> 20 {
		z.Write(zeros)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// withSection copies the 64-bit little-endian ELF file at path with the
// section named pointed at data, appended to it, and marked compressed.
func withSection(t *testing.T, path, name string, data []byte) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	index := -1
	for i, s := range f.Sections {
		if s.Name == name {
			index = i
		}
	}
	f.Close()
	if index < 0 {
		t.Fatalf("%s has no section %s", path, name)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	off := len(b)
	b = append(b, data...)
	// Elf64_Ehdr's e_shoff and e_shentsize; Elf64_Shdr's sh_flags,
	// sh_offset and sh_size.
	shdr := b[binary.LittleEndian.Uint64(b[0x28:])+uint64(index)*uint64(binary.LittleEndian.Uint16(b[0x3a:])):]
	binary.LittleEndian.PutUint64(shdr[8:], binary.LittleEndian.Uint64(shdr[8:])|uint64(elf.SHF_COMPRESSED))
	binary.LittleEndian.PutUint64(shdr[24:], uint64(off))
	binary.LittleEndian.PutUint64(shdr[32:], uint64(len(data)))
	out := filepath.Join(t.TempDir(), strings.TrimPrefix(name, "."))
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

// patched copies the ELF file at path with data written at off in the
// named section.
func patched(t *testing.T, path, name string, off int, data []byte) string {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(name)
	f.Close()
	if s == nil {
		t.Fatalf("%s has no section %s", path, name)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[int(s.Offset)+off:], data)
	out := filepath.Join(t.TempDir(), "patched")
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

// allocated is how many bytes the heap handed out while fn ran.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
