package credential

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The first load creates a 0600 key; the next ones read the same key, also
// when several start at once.
func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	keys := make([]*Key, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrCreateKey(dir)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, k := range keys[1:] {
		if k.Fingerprint("x") != keys[0].Fingerprint("x") {
			t.Fatal("concurrent loads made different keys")
		}
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != keySize {
		t.Errorf("key file: %v %v", fi, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files, want the key alone", len(entries))
	}
	again, err := LoadOrCreateKey(dir)
	if err != nil || again.Fingerprint("x") != keys[0].Fingerprint("x") {
		t.Errorf("reload: %v", err)
	}
}

// A key others may read, or of the wrong size, is refused and left alone.
func TestLoadOrCreateKeyRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		mode os.FileMode
		size int
		want string
	}{
		{"world-readable", 0o644, keySize, "want a regular file of mode 0600"},
		{"short", 0o600, 5, "is not a 32-byte key"},
		{"long", 0o600, 64, "is not a 32-byte key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, KeyFile)
			if err := os.WriteFile(path, make([]byte, c.size), c.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, c.mode)
			_, err := LoadOrCreateKey(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want %q", err, c.want)
			}
			if b, _ := os.ReadFile(path); len(b) != c.size {
				t.Errorf("the key file was changed")
			}
		})
	}
}
