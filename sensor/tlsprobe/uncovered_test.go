//go:build linux

package tlsprobe

import (
	"bytes"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// withGoVersion copies the Go binary src, its build info claiming version
// (of the same length as the real one), to a file of the test's.
func withGoVersion(t *testing.T, src, version string) string {
	t.Helper()
	bi, err := buildinfo.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(version) != len(bi.GoVersion) {
		t.Fatalf("version %q does not fit in %q", version, bi.GoVersion)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte("\xff Go buildinf:"))
	i := bytes.Index(b[at:], []byte(bi.GoVersion))
	if at < 0 || i < 0 {
		t.Fatal("no build info to rewrite")
	}
	copy(b[at+i:], version)
	out := filepath.Join(t.TempDir(), filepath.Base(src)+"-"+version)
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if bi, err := buildinfo.ReadFile(out); err != nil || bi.GoVersion != version {
		t.Fatalf("rewritten build info: %v, %v", bi, err)
	}
	return out
}

// goVersionTail is the Go version of bin past "go1.NN": ".8".
func goVersionTail(t *testing.T, bin string) string {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return bi.GoVersion[len("go1.NN"):]
}

// Uncovered names what the probes cannot take, and nothing else: a Go
// client of a version without the register ABI, and a stripped one of a
// version past the offsets table, are uncovered, with the reason; the
// clients as built (the table or DWARF), an unstripped one of an unknown
// version (DWARF), a Go program without TLS and curl (OpenSSL) are not.
func TestUncovered(t *testing.T) {
	client, stripped := goClient(t, "client"), goClient(t, "stripped")
	tail := goVersionTail(t, client)
	old, future := "go1.16"+tail, "go1.99"+tail
	for bin, want := range map[string]string{
		withGoVersion(t, stripped, old):    "Go 1.16" + tail + " crypto/tls: no register ABI",
		withGoVersion(t, client, old):      "Go 1.16" + tail + " crypto/tls: no register ABI",
		withGoVersion(t, stripped, future): "Go 1.99" + tail + " crypto/tls: no offsets",
	} {
		if stack, reason := Uncovered(bin); stack != StackGo || !strings.HasPrefix(reason, want) {
			t.Errorf("Uncovered(%s) = %q, %q; want go, %q", filepath.Base(bin), stack, reason, want)
		}
	}
	for _, bin := range []string{client, stripped, withGoVersion(t, client, future), os.Args[0]} {
		if stack, reason := Uncovered(bin); stack != "" {
			t.Errorf("Uncovered(%s) = %q, %q; the probes take it", filepath.Base(bin), stack, reason)
		}
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		if stack, reason := Uncovered(curl); stack != "" {
			t.Errorf("curl (OpenSSL): %q, %q", stack, reason)
		}
	}
	if stack, _ := Uncovered("/nonexistent"); stack != "" {
		t.Error("a missing file is uncovered")
	}
}
