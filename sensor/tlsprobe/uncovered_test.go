//go:build linux

package tlsprobe

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/internal/privtest"
)

// Uncovered finds crypto/tls in a Go client built normally and with
// -s -w, and nothing in a Go program without TLS nor in curl (OpenSSL).
func TestUncovered(t *testing.T) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no Go toolchain to build the clients")
	}
	if privtest.Emulated() {
		t.Skip("building Go clients from a cold cache under emulation takes minutes; nothing here is kernel-specific")
	}
	dir := t.TempDir()
	write := func(name, src string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "main.go"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tlsclient", "package main\nimport \"net/http\"\nfunc main() { http.Get(\"https://127.0.0.1:1/\") }\n")
	write("plain", "package main\nimport \"os\"\nfunc main() { os.Exit(0) }\n")
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(out, pkg string, flags ...string) string {
		bin := filepath.Join(dir, out)
		cmd := exec.Command(gotool, append(append([]string{"build", "-o", bin}, flags...), "./"+pkg)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		return bin
	}
	for _, bin := range []string{build("client", "tlsclient"), build("stripped", "tlsclient", "-ldflags=-s -w")} {
		if stack, reason := Uncovered(bin); stack != StackGo || !strings.Contains(reason, "crypto/tls") {
			t.Errorf("Uncovered(%s) = %q, %q; want go crypto/tls", filepath.Base(bin), stack, reason)
		}
	}
	if stack, reason := Uncovered(build("plain", "plain")); stack != "" {
		t.Errorf("a Go program without TLS: %q, %q", stack, reason)
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
