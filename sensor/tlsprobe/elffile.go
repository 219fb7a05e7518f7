//go:build linux

package tlsprobe

import (
	"bufio"
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxSection bounds what looking at an executable reads of one section.
// The file is a member's, so its headers are the adversary's word: a
// compressed section states its own uncompressed size, and a few MiB of
// zlib can state gigabytes, which debug/elf would inflate into the
// daemon's heap. The largest section read of a real file here is the
// .gopclntab of a 68 MB Go test binary: 29 MiB.
const maxSection = 128 << 20

// openELF opens the executable at path, refusing one that has a section
// larger than maxSection among those debug/elf reads whole when asked
// (string tables, the dynamic section) or inflates (a compressed one).
// DWARF's sections are left to readDWARF, which does without them.
func openELF(path string) (*elf.File, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	for _, s := range f.Sections {
		whole := s.Flags&elf.SHF_COMPRESSED != 0 || s.Type == elf.SHT_STRTAB || s.Type == elf.SHT_DYNAMIC
		if whole && s.Type != elf.SHT_NOBITS && !strings.HasPrefix(s.Name, ".debug_") && s.Size > maxSection {
			f.Close()
			return nil, fmt.Errorf("section %s states %d bytes, more than the %d read of one", s.Name, s.Size, maxSection)
		}
	}
	return f, nil
}

// sectionData reads the section whole, refusing one larger than
// maxSection. One allocation of its size: debug/elf's Data reads a large
// section in steps, copying it each time it grows, which was two thirds
// of the CPU time looking at a Go test binary took.
func sectionData(s *elf.Section) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, fmt.Errorf("section %s has no data in the file", s.Name)
	}
	if s.Size > maxSection {
		return nil, fmt.Errorf("section %s states %d bytes, more than the %d read of one", s.Name, s.Size, maxSection)
	}
	b := make([]byte, s.Size)
	if _, err := io.ReadFull(s.Open(), b); err != nil {
		return nil, fmt.Errorf("read section %s: %w", s.Name, err)
	}
	return b, nil
}

// scanSymbols calls visit with each entry of the symbol table syms until
// visit returns false, without making every symbol a Go value (debug/elf's
// Symbols does: for node's 75,000 dynamic and 110,000 static symbols that
// was 65 MiB of heap). name is valid only during the call.
func scanSymbols(f *elf.File, syms *elf.Section, visit func(name []byte, info byte, shndx elf.SectionIndex, value uint64) bool) error {
	if f.Class != elf.ELFCLASS64 {
		return fmt.Errorf("%s ELF: only 64-bit executables are probed", f.Class)
	}
	if int(syms.Link) >= len(f.Sections) {
		return fmt.Errorf("section %s names no string table", syms.Name)
	}
	names, err := sectionData(f.Sections[syms.Link])
	if err != nil {
		return err
	}
	var entry [elf.Sym64Size]byte
	// Buffered: the section reader reads the file at each call, and one
	// system call per 24-byte entry was 75,000 of them for node.
	r := bufio.NewReaderSize(syms.Open(), 64<<10)
	for {
		if _, err := io.ReadFull(r, entry[:]); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read %s: %w", syms.Name, err)
		}
		name, info := f.ByteOrder.Uint32(entry[0:4]), entry[4]
		shndx, value := elf.SectionIndex(f.ByteOrder.Uint16(entry[6:8])), f.ByteOrder.Uint64(entry[8:16])
		if !visit(cString(names, name), info, shndx, value) {
			return nil
		}
	}
}

// readDWARF reads what finding a structure's members in DWARF takes: the
// entries, their abbreviations and the tables their attributes index
// (DWARF 5). The line, frame, range and location tables, most of a Go
// binary's DWARF, stay unread, and debug/elf's DWARF would inflate them
// all. The older form of compressed sections (.zdebug_*) is not read:
// the table by version has every Go release that wrote it.
func readDWARF(f *elf.File) (*dwarf.Data, error) {
	data := map[string][]byte{}
	for _, name := range []string{"abbrev", "info", "str", "addr", "str_offsets", "line_str"} {
		if s := f.Section(".debug_" + name); s != nil {
			b, err := sectionData(s)
			if err != nil {
				return nil, err
			}
			data[name] = b
		}
	}
	if data["info"] == nil {
		return nil, errors.New("no DWARF")
	}
	d, err := dwarf.New(data["abbrev"], nil, nil, data["info"], nil, nil, nil, data["str"])
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"addr", "str_offsets", "line_str"} {
		if b := data[name]; b != nil {
			if err := d.AddSection(".debug_"+name, b); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}
