// Package fsizelimit makes writes fail part-way for tests of what a full
// disk does: it caps the size a file of the process may grow to
// (RLIMIT_FSIZE), in a child process of the test binary, since the limit is
// the whole process's.
package fsizelimit

import (
	"bytes"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
)

const childEnv = "AGENTFENCE_FSIZE_CHILD"

// Child runs the calling test again in a child process and returns false
// once the child passed; in the child it returns true and a directory for
// the test's files.
func Child(t *testing.T) (dir string, inChild bool) {
	t.Helper()
	if dir := os.Getenv(childEnv); dir != "" {
		return dir, true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	return "", false
}

// Set makes writes that would take a file past n bytes fail with EFBIG
// (instead of the SIGXFSZ that would kill the process) until the returned
// function restores the limit. Only in a Child.
func Set(t *testing.T, n int64) (restore func()) {
	t.Helper()
	if os.Getenv(childEnv) == "" {
		t.Fatal("fsizelimit.Set outside fsizelimit.Child: the limit would hold for every test of the binary")
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: uint64(n), Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
			t.Fatal(err)
		}
	}
}
