//go:build linux

package tlsprobe

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/x86/x86asm"
)

// The crypto/tls methods the probes read, by their names in a Go binary.
const (
	goWrite = "crypto/tls.(*Conn).Write"
	goRead  = "crypto/tls.(*Conn).Read"
	goClose = "crypto/tls.(*Conn).Close"
)

// goTLS is what probing one Go executable's crypto/tls takes: file
// offsets (what a uprobe is placed at) and the layout of the structures
// between a *tls.Conn and its descriptor.
type goTLS struct {
	version            string // as the binary says: go1.22.4
	write, read, close uint64 // entries
	readRets           []uint64
	offsets            goOffsets
	fromDWARF          bool
}

// GoError says why a Go executable's crypto/tls is not probed.
type GoError struct {
	Version string // 1.16, without the "go"
	Reason  string
}

func (e *GoError) Error() string { return "Go " + e.Version + " crypto/tls: " + e.Reason }

// Unwrap makes a GoError an ErrNoTLS: nothing the probes read.
func (e *GoError) Unwrap() error { return ErrNoTLS }

// errNotGoTLS: not a Go program, or one without crypto/tls.
var errNotGoTLS = errors.New("no Go crypto/tls")

var goMinor = regexp.MustCompile(`go1\.(\d+)`)

// inspectGo finds what probing the Go executable at path takes. It reads
// the function table from .gopclntab, which stripping (-s -w) leaves in
// place, so stripped binaries are probed too.
func inspectGo(path string) (*goTLS, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, errNotGoTLS
	}
	f, err := openELF(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sect := f.Section(".gopclntab")
	if sect == nil {
		return nil, errNotGoTLS
	}
	pcln, err := sectionData(sect)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(pcln, []byte(goWrite)) {
		return nil, errNotGoTLS
	}
	g := &goTLS{version: bi.GoVersion}
	version := strings.TrimPrefix(bi.GoVersion, "go")
	fail := func(format string, args ...any) error {
		return &GoError{Version: version, Reason: fmt.Sprintf(format, args...)}
	}
	m := goMinor.FindStringSubmatch(bi.GoVersion)
	if m == nil {
		return nil, fail("no offsets (unknown version)")
	}
	minor, _ := strconv.Atoi(m[1])
	// The register ABI, which the probes read arguments in, came with Go
	// 1.17 on amd64 and 1.18 on arm64.
	switch {
	case f.Machine == elf.EM_X86_64 && runtime.GOARCH == "amd64":
		if minor < 17 {
			return nil, fail("no register ABI (Go 1.17+)")
		}
	case f.Machine == elf.EM_AARCH64 && runtime.GOARCH == "arm64":
		if minor < 18 {
			return nil, fail("no register ABI (Go 1.18+)")
		}
	default:
		return nil, fail("%v executable on %s", f.Machine, runtime.GOARCH)
	}
	fns, err := goFuncs(f, pcln, []string{goWrite, goRead, goClose})
	if err != nil {
		return nil, fail("%v", err)
	}
	offs := make([]uint64, 3)
	for i, fn := range fns {
		if offs[i], err = fileOffset(f, fn.Entry); err != nil {
			return nil, fail("%s: %v", fn.Name, err)
		}
	}
	g.write, g.read, g.close = offs[0], offs[1], offs[2]
	if n := fns[1].End - fns[1].Entry; n > maxFuncSize {
		return nil, fail("%s: %d bytes long, more than the %d read", goRead, n, maxFuncSize)
	}
	code := make([]byte, fns[1].End-fns[1].Entry)
	if err := readVirtual(f, fns[1].Entry, code); err != nil {
		return nil, fail("%s: %v", goRead, err)
	}
	rets, err := retOffsets(f.Machine, code)
	if err != nil || len(rets) == 0 {
		return nil, fail("%s: no return found (%v)", goRead, err)
	}
	for _, r := range rets {
		g.readRets = append(g.readRets, g.read+uint64(r))
	}
	if g.offsets, g.fromDWARF, err = connOffsets(f, minor); err != nil {
		return nil, fail("%v", err)
	}
	return g, nil
}

// maxFuncSize bounds the code of (*tls.Conn).Read read to find its
// returns: its length is the function table's word (945 bytes in Go
// 1.26).
const maxFuncSize = 64 << 10

// loadSegment is the loadable segment holding the virtual address addr.
func loadSegment(f *elf.File, addr uint64) (*elf.Prog, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Filesz {
			return p, nil
		}
	}
	return nil, fmt.Errorf("address %#x is in no executable segment", addr)
}

// fileOffset converts a virtual address to the file offset a uprobe is
// placed at. Offset 0, the ELF header, is no function's, and cilium/ebpf
// takes a zero address for none: it would read the file's whole symbol
// table to look for a name.
func fileOffset(f *elf.File, addr uint64) (uint64, error) {
	p, err := loadSegment(f, addr)
	if err != nil {
		return 0, err
	}
	off := addr - p.Vaddr + p.Off
	if off == 0 {
		return 0, fmt.Errorf("address %#x is the file's header", addr)
	}
	return off, nil
}

func readVirtual(f *elf.File, addr uint64, buf []byte) error {
	p, err := loadSegment(f, addr)
	if err != nil {
		return err
	}
	if addr+uint64(len(buf)) > p.Vaddr+p.Filesz {
		return fmt.Errorf("%d bytes at %#x run past their segment", len(buf), addr)
	}
	_, err = p.ReadAt(buf, int64(addr-p.Vaddr))
	return err
}

// retOffsets returns the offsets of the RET instructions in a function's
// code. On amd64 every instruction must decode: a probe placed inside an
// instruction would corrupt the program, so a function not understood
// whole is not probed. On arm64 instructions are four bytes each, so a
// word that does not decode (padding) cannot misplace the others.
func retOffsets(machine elf.Machine, code []byte) ([]int, error) {
	var rets []int
	switch machine {
	case elf.EM_X86_64:
		for i := 0; i < len(code); {
			inst, err := x86asm.Decode(code[i:], 64)
			if err == nil && inst.Op == 0 {
				// A prefix with nothing after it: what the decoder makes
				// of an instruction cut short.
				err = errors.New("truncated instruction")
			}
			if err != nil {
				return nil, fmt.Errorf("offset %#x: %v", i, err)
			}
			if inst.Op == x86asm.RET {
				rets = append(rets, i)
			}
			i += inst.Len
		}
	case elf.EM_AARCH64:
		for i := 0; i+4 <= len(code); i += 4 {
			if inst, err := arm64asm.Decode(code[i : i+4]); err == nil && inst.Op == arm64asm.RET {
				rets = append(rets, i)
			}
		}
	default:
		return nil, fmt.Errorf("machine %v", machine)
	}
	return rets, nil
}
