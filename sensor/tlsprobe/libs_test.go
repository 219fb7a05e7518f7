//go:build linux

package tlsprobe

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// LibrariesIn finds a root's own libssl and node (a container's image),
// at their paths under the root, and nothing that is not a file.
func TestLibrariesIn(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"usr/lib/x86_64-linux-gnu/libssl.so.3", "usr/local/bin/node"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "usr/lib64/libssl.so.1.1"), 0o755) // a directory, not a library
	got := LibrariesIn(root)
	want := []string{filepath.Join(root, "usr/lib/x86_64-linux-gnu/libssl.so.3"), filepath.Join(root, "usr/local/bin/node")}
	if !slices.Equal(got, want) {
		t.Errorf("LibrariesIn = %q, want %q", got, want)
	}
	if got := LibrariesIn(t.TempDir()); len(got) != 0 {
		t.Errorf("an empty root has %q", got)
	}
}
