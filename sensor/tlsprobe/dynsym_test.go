//go:build linux

package tlsprobe

import (
	"debug/elf"
	"os"
	"path/filepath"
	"testing"
)

// TestExportedFuncs: the OpenSSL functions found, and their file offsets,
// are what debug/elf's full symbol table gives, in the host's libssl and
// node; a file that only imports them (curl) exports none; what is not
// ELF is an error.
func TestExportedFuncs(t *testing.T) {
	files := append(Libraries(), Executables()...)
	if len(files) == 0 {
		t.Skip("no libssl or node on this host")
	}
	for _, path := range files {
		got, err := exportedFuncs(path, opensslFuncs...)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		want := map[string]uint64{}
		f, err := elf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		syms, err := f.DynamicSymbols()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			for _, name := range opensslFuncs {
				if s.Name == name && s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
					if want[name], err = fileOffset(f, s.Value); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		f.Close()
		if len(got) != len(want) || got["SSL_write"] == 0 || got["SSL_read"] == 0 {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
		for name, off := range want {
			if got[name] != off {
				t.Errorf("%s: %s at %#x, want %#x", path, name, got[name], off)
			}
		}
	}
	// The test binary (Go) defines no OpenSSL function.
	if self, err := os.Executable(); err == nil {
		if got, err := exportedFuncs(self, opensslFuncs...); err != nil || len(got) != 0 {
			t.Errorf("%s: %v, %v; want none", self, got, err)
		}
	}
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte("#!/bin/sh\necho not ELF\n"), 0o755)
	if _, err := exportedFuncs(junk, opensslFuncs...); err == nil {
		t.Error("a shell script read as ELF")
	}
}
