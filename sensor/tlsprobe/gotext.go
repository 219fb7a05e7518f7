//go:build linux

package tlsprobe

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"
)

// goFuncs finds the functions named in the pclntab. Its entries count
// from runtime.text, whose address a stripped binary does not state
// plainly, so each candidate address is tried and the first under which
// every function starts with Go's stack-bound check is kept: a uprobe
// placed off an instruction boundary would corrupt the program, so an
// address that cannot be confirmed is not used.
func goFuncs(f *elf.File, pcln []byte, names []string) ([]*gosym.Func, error) {
	if err := checkFuncCount(pcln); err != nil {
		return nil, err
	}
	for _, start := range textStarts(f, pcln) {
		tab, err := gosym.NewTable(nil, gosym.NewLineTable(pcln, start))
		if err != nil {
			return nil, fmt.Errorf("function table: %v", err)
		}
		fns := make([]*gosym.Func, len(names))
		ok := true
		for i, name := range names {
			fn := tab.LookupFunc(name)
			if fn == nil || fn.End <= fn.Entry {
				return nil, fmt.Errorf("no %s", name)
			}
			fns[i] = fn
			code := make([]byte, min(16, fn.End-fn.Entry))
			if readVirtual(f, fn.Entry, code) != nil || !stackCheck(f.Machine, code) {
				ok = false
				break
			}
		}
		if ok {
			return fns, nil
		}
	}
	return nil, fmt.Errorf("the functions' code was not found where the function table says (runtime.text unknown)")
}

// maxFuncs bounds the functions a table may list: debug/gosym makes each a
// Go value, some 330 bytes (names included) for 8 in the table, so a
// crafted table of maxSection could ask for gigabytes. A 68 MB Go test
// binary lists 62,354.
const maxFuncs = 1 << 19

// checkFuncCount refuses a function table that is not Go 1.16's or later
// (the register ABI came with 1.17) or lists more than maxFuncs.
func checkFuncCount(pcln []byte) error {
	if len(pcln) < 16 || pcln[7] != 8 {
		return errors.New("function table: not a 64-bit one")
	}
	switch magic := binary.LittleEndian.Uint32(pcln); magic {
	case 0xfffffffa, 0xfffffff0, 0xfffffff1: // Go 1.16, 1.18, 1.20
	default:
		return fmt.Errorf("function table: magic %#x is not Go 1.16's or later", magic)
	}
	if n := binary.LittleEndian.Uint64(pcln[8:]); n > maxFuncs {
		return fmt.Errorf("function table: %d functions, more than the %d read", n, maxFuncs)
	}
	return nil
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
