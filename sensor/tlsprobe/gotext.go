//go:build linux

package tlsprobe

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"
)

// goFunc is where a function of a Go executable starts and ends.
type goFunc struct {
	Name       string
	Entry, End uint64
}

// goFuncs finds the functions named in the pclntab. Its entries count
// from runtime.text, whose address a stripped binary does not state
// plainly, so each candidate address is tried and the first under which
// every function starts with Go's stack-bound check is kept: a uprobe
// placed off an instruction boundary would corrupt the program, so an
// address that cannot be confirmed is not used.
func goFuncs(f *elf.File, pcln []byte, names []string) ([]goFunc, error) {
	tab, err := newFuncTable(pcln)
	if err != nil {
		return nil, err
	}
	spans, found := tab.find(names)
	for i, name := range names {
		if !found[i] || spans[i].end <= spans[i].entry {
			return nil, fmt.Errorf("no %s", name)
		}
	}
	starts := []uint64{0} // Go 1.16 and 1.17: the entries are addresses
	if !tab.abs {
		starts = textStarts(f, pcln)
	}
candidates:
	for _, start := range starts {
		fns := make([]goFunc, len(names))
		for i, name := range names {
			fns[i] = goFunc{Name: name, Entry: start + spans[i].entry, End: start + spans[i].end}
			code := make([]byte, min(16, spans[i].end-spans[i].entry))
			if readVirtual(f, fns[i].Entry, code) != nil || !stackCheck(f.Machine, code) {
				continue candidates
			}
		}
		return fns, nil
	}
	return nil, fmt.Errorf("the functions' code was not found where the function table says (runtime.text unknown)")
}

// textStarts are the candidates for runtime.text, best first: the symbol;
// the pclntab header's copy (Go 1.18+; zero when the linker left it to be
// relocated); the text field of runtime.firstmoduledata, found as the
// word after the pclntab's address that lies in .text; the start of
// .text, where Go's own linker puts runtime.text (an external linker puts
// C code first).
func textStarts(f *elf.File, pcln []byte) []uint64 {
	var out []uint64
	add := func(v uint64) {
		if v != 0 && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if syms := f.Section(".symtab"); syms != nil {
		// A table that cannot be read leaves the other candidates.
		_ = scanSymbols(f, syms, func(name []byte, _ byte, _ elf.SectionIndex, value uint64) bool {
			if string(name) != "runtime.text" {
				return true
			}
			add(value)
			return false
		})
	}
	if len(pcln) >= 8+3*8 && pcln[7] == 8 {
		if magic := binary.LittleEndian.Uint32(pcln); magic == 0xfffffff0 || magic == 0xfffffff1 {
			add(binary.LittleEndian.Uint64(pcln[8+2*8:]))
		}
	}
	text, tab := f.Section(".text"), f.Section(".gopclntab")
	if text == nil || tab == nil {
		return out
	}
	// moduledata (in .go.module in recent Go, .noptrdata before): pcHeader, six slices,
	// findfunctab, minpc, maxpc, text.
	const textWord = 1 + 6*3 + 1 + 2
	for _, name := range []string{".go.module", ".noptrdata", ".data"} {
		s := f.Section(name)
		if s == nil || s.Type != elf.SHT_PROGBITS {
			continue
		}
		data, err := sectionData(s)
		if err != nil {
			continue
		}
		for i := 0; i+(textWord+1)*8 <= len(data); i += 8 {
			if binary.LittleEndian.Uint64(data[i:]) != tab.Addr {
				continue
			}
			if v := binary.LittleEndian.Uint64(data[i+textWord*8:]); v >= text.Addr && v < text.Addr+text.Size {
				add(v)
			}
		}
	}
	add(text.Addr)
	return out
}

// stackCheck says whether code starts as a Go function that can grow its
// stack does: comparing the stack pointer with g.stackguard0, g being R14
// on amd64 and R28 on arm64, within its first three instructions.
func stackCheck(machine elf.Machine, code []byte) bool {
	for i, n := 0, 0; n < 3 && i < len(code); n++ {
		switch machine {
		case elf.EM_X86_64:
			inst, err := x86asm.Decode(code[i:], 64)
			if err != nil || inst.Op == 0 {
				return false
			}
			for _, a := range inst.Args {
				if m, ok := a.(x86asm.Mem); ok && inst.Op == x86asm.CMP && m.Base == x86asm.R14 && m.Disp == 16 {
					return true
				}
			}
			i += inst.Len
		case elf.EM_AARCH64:
			if i+4 > len(code) {
				return false
			}
			inst, err := arm64asm.Decode(code[i : i+4])
			if err == nil && inst.Op == arm64asm.LDR && strings.Contains(inst.String(), "[X28,#16]") {
				return true
			}
			i += 4
		default:
			return false
		}
	}
	return false
}
