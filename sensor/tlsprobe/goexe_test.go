//go:build linux

package tlsprobe

import (
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/internal/privtest"
)

func TestRetOffsets(t *testing.T) {
	// amd64: MOVQ AX, 8(SP); RET; INT3; ADDQ $16, SP; RET.
	x86 := []byte{0x48, 0x89, 0x44, 0x24, 0x08, 0xc3, 0xcc, 0x48, 0x83, 0xc4, 0x10, 0xc3}
	if got, err := retOffsets(elf.EM_X86_64, x86); err != nil || !slices.Equal(got, []int{5, 11}) {
		t.Errorf("amd64: %v, %v; want [5 11]", got, err)
	}
	// A byte 0xc3 inside an instruction (MOVL $0xc3, AX) is no RET.
	if got, err := retOffsets(elf.EM_X86_64, []byte{0xb8, 0xc3, 0, 0, 0, 0xc3}); err != nil || !slices.Equal(got, []int{5}) {
		t.Errorf("amd64 immediate 0xc3: %v, %v; want [5]", got, err)
	}
	// A function cut inside an instruction is refused, not guessed at.
	if _, err := retOffsets(elf.EM_X86_64, []byte{0xc3, 0x48, 0x89}); err == nil {
		t.Error("amd64: a truncated instruction decoded")
	}
	// arm64: MOVD R1, R0; RET; a zero word (padding); RET.
	arm := []byte{0xe0, 0x03, 0x01, 0xaa, 0xc0, 0x03, 0x5f, 0xd6, 0, 0, 0, 0, 0xc0, 0x03, 0x5f, 0xd6}
	if got, err := retOffsets(elf.EM_AARCH64, arm); err != nil || !slices.Equal(got, []int{4, 12}) {
		t.Errorf("arm64: %v, %v; want [4 12]", got, err)
	}
}

// TestInspectGo: both clients are probed, the stripped one through its
// pclntab; the RETs found are where the toolchain's disassembler puts
// them; a program without crypto/tls and a C program are not Go TLS.
func TestInspectGo(t *testing.T) {
	full, err := inspectGo(goClient(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	if !full.fromDWARF {
		t.Error("offsets of an unstripped client not from its DWARF")
	}
	stripped, err := inspectGo(goClient(t, "stripped"))
	if err != nil {
		t.Fatal(err)
	}
	if stripped.fromDWARF || stripped.offsets != full.offsets || len(stripped.readRets) != len(full.readRets) {
		t.Errorf("stripped %+v, unstripped %+v", stripped, full)
	}
	for _, g := range []*goTLS{full, stripped} {
		if g.write == 0 || g.read == 0 || g.close == 0 || len(g.readRets) == 0 {
			t.Errorf("%+v", g)
		}
		for _, r := range g.readRets {
			if r <= g.read {
				t.Errorf("a RET at %#x, before Read's entry %#x", r, g.read)
			}
		}
	}
	// The toolchain's disassembler agrees on where Read returns.
	bin := goClient(t, "client")
	out, err := exec.Command("go", "tool", "objdump", "-s", `^crypto/tls\.\(\*Conn\)\.Read$`, bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []uint64
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 4 && fields[3] == "RET" {
			addr, err := strconv.ParseUint(strings.TrimPrefix(fields[1], "0x"), 16, 64)
			if err != nil {
				t.Fatalf("objdump line %q: %v", line, err)
			}
			off, err := fileOffset(f, addr)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, off)
		}
	}
	if len(want) == 0 || !slices.Equal(full.readRets, want) {
		t.Errorf("RETs at %#x, objdump says %#x", full.readRets, want)
	}
	if _, err := inspectGo("/bin/true"); !errors.Is(err, errNotGoTLS) {
		t.Errorf("/bin/true: %v", err)
	}
	if _, err := inspectGo(os.Args[0]); err != nil && !errors.Is(err, errNotGoTLS) {
		t.Errorf("the test binary: %v", err)
	}
}

// TestOffsetsTableMatchesDWARF: the table's entry for the local Go
// version is what the toolchain's DWARF says.
func TestOffsetsTableMatchesDWARF(t *testing.T) {
	f, err := elf.Open(goClient(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := f.DWARF()
	if err != nil {
		t.Fatal(err)
	}
	fromDWARF, err := dwarfOffsets(d)
	if err != nil {
		t.Fatal(err)
	}
	g, err := inspectGo(goClient(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	m := goMinor.FindStringSubmatch(g.version)
	var minor int
	for _, c := range m[1] {
		minor = minor*10 + int(c-'0')
	}
	table, ok := goLayouts[minor]
	if !ok {
		t.Fatalf("%s is not in the table: add it (DWARF says %+v)", g.version, fromDWARF)
	}
	if table != fromDWARF {
		t.Errorf("%s: table %+v, DWARF %+v", g.version, table, fromDWARF)
	}
	if _, _, err := connOffsets(&elf.File{}, 16); err == nil {
		t.Error("offsets for Go 1.16 without DWARF")
	}
}

// stackCheck knows a Go function's start by its stack-bound check.
func TestStackCheck(t *testing.T) {
	for _, c := range []struct {
		machine elf.Machine
		code    []byte
		want    bool
	}{
		// CMPQ SP, 16(R14); JLS ...
		{elf.EM_X86_64, []byte{0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0, 0, 0, 0}, true},
		// LEAQ -0x28(SP), R12; CMPQ R12, 16(R14)
		{elf.EM_X86_64, []byte{0x4c, 0x8d, 0x64, 0x24, 0xd8, 0x4d, 0x3b, 0x66, 0x10}, true},
		// CMPQ SP, 16(R14), entered 0x100 bytes early: C code's NOPs.
		{elf.EM_X86_64, []byte{0x90, 0x90, 0x90, 0x90, 0x49, 0x3b, 0x66, 0x10}, false},
		// MOVD 16(R28), R16
		{elf.EM_AARCH64, []byte{0x90, 0x0b, 0x40, 0xf9}, true},
		{elf.EM_AARCH64, []byte{0xc0, 0x03, 0x5f, 0xd6}, false},
	} {
		if got := stackCheck(c.machine, c.code); got != c.want {
			t.Errorf("%v % x: %v, want %v", c.machine, c.code, got, c.want)
		}
	}
}

// TestArm64Functions: on an arm64 build of the client (cross-compiled;
// nothing is run), the functions are found and confirmed by their stack
// checks, stripped or not, Read's RETs are where the toolchain's
// disassembler puts them, and the DWARF offsets are the table's.
func TestArm64Functions(t *testing.T) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no Go toolchain")
	}
	if privtest.Emulated() {
		t.Skip("building Go clients from a cold cache under emulation takes minutes")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module client\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(goClientSrc), 0o644)
	rets := map[string][]uint64{}
	for out, flags := range map[string][]string{"full": nil, "stripped": {"-ldflags=-s -w"}} {
		cmd := exec.Command(gotool, append(append([]string{"build", "-o", out}, flags...), ".")...)
		cmd.Dir, cmd.Env = dir, append(os.Environ(), "CGO_ENABLED=0", "GOARCH=arm64", "GOFLAGS=-mod=mod")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
		f, err := elf.Open(filepath.Join(dir, out))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		pcln, err := f.Section(".gopclntab").Data()
		if err != nil {
			t.Fatal(err)
		}
		fns, err := goFuncs(f, pcln, []string{goWrite, goRead, goClose})
		if err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if d, err := f.DWARF(); err == nil {
			m := goMinor.FindStringSubmatch(runtime.Version())
			minor, _ := strconv.Atoi(m[1])
			if o, err := dwarfOffsets(d); err != nil || o != goLayouts[minor] {
				t.Errorf("arm64 DWARF offsets %+v, %v; the table has %+v for Go 1.%d", o, err, goLayouts[minor], minor)
			}
		}
		code := make([]byte, fns[1].End-fns[1].Entry)
		if err := readVirtual(f, fns[1].Entry, code); err != nil {
			t.Fatal(err)
		}
		offs, err := retOffsets(f.Machine, code)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range offs {
			rets[out] = append(rets[out], fns[1].Entry+uint64(o))
		}
	}
	if !slices.Equal(rets["full"], rets["stripped"]) {
		t.Errorf("RETs unstripped %#x, stripped %#x", rets["full"], rets["stripped"])
	}
	out, err := exec.Command(gotool, "tool", "objdump", "-s", `^crypto/tls\.\(\*Conn\)\.Read$`, filepath.Join(dir, "full")).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 4 && fields[3] == "RET" {
			addr, err := strconv.ParseUint(strings.TrimPrefix(fields[1], "0x"), 16, 64)
			if err != nil {
				t.Fatalf("objdump line %q: %v", line, err)
			}
			want = append(want, addr)
		}
	}
	if len(want) == 0 || !slices.Equal(rets["full"], want) {
		t.Errorf("RETs at %#x, objdump says %#x", rets["full"], want)
	}
}

// BenchmarkInspectGo: what looking at a member's Go executable costs the
// daemon, once per file: the test binary (unstripped, with DWARF).
func BenchmarkInspectGo(b *testing.B) {
	st, err := os.Stat(os.Args[0])
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := inspectGo(os.Args[0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(st.Size())/1e6, "file_MB")
}

// TestFileOffsetRefusesHeader: no function starts at offset 0, and a
// uprobe given address 0 would make cilium/ebpf read the file's symbols.
func TestFileOffsetRefusesHeader(t *testing.T) {
	f := &elf.File{Progs: []*elf.Prog{{ProgHeader: elf.ProgHeader{Type: elf.PT_LOAD, Flags: elf.PF_R | elf.PF_X, Vaddr: 0x400000, Filesz: 0x1000}}}}
	if off, err := fileOffset(f, 0x400000); err == nil {
		t.Errorf("the header's address: offset %#x", off)
	}
	if off, err := fileOffset(f, 0x400010); err != nil || off != 0x10 {
		t.Errorf("an address in the segment: %#x, %v; want 0x10", off, err)
	}
}
