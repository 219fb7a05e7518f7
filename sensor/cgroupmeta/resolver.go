//go:build linux

package cgroupmeta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileidKernfs is the file handle type kernfs (and so cgroupfs) hands out:
// the handle body is the 64-bit node id, which is the cgroup id BPF sees.
const fileidKernfs = 0xfe

// Resolver maps the cgroup ids in BPF events to cgroup paths. Results are
// cached; a cgroup's id is never reused while the kernel runs, so an entry
// never goes stale, it only becomes useless once the cgroup is removed.
type Resolver struct {
	root string
	max  int

	mu    sync.Mutex
	rootF *os.File
	cache map[uint64]string
}

// NewResolver resolves ids below the cgroup2 mount at root. max bounds the
// cache; when full it is dropped wholesale, which is cheap to refill.
func NewResolver(root string, max int) (*Resolver, error) {
	f, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	if max <= 0 {
		max = 4096
	}
	return &Resolver{root: root, max: max, rootF: f, cache: map[uint64]string{}}, nil
}

// Close releases the mount handle.
func (r *Resolver) Close() error { return r.rootF.Close() }

// Path returns the cgroup path of id, relative to the mount and starting with
// "/" (the form /proc/<pid>/cgroup uses).
func (r *Resolver) Path(id uint64) (string, error) {
	r.mu.Lock()
	p, ok := r.cache[id]
	r.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := r.byHandle(id)
	if err != nil {
		// open_by_handle_at needs CAP_DAC_READ_SEARCH; walking works with
		// plain read access.
		p, err = r.byWalk(id)
		if err != nil {
			return "", err
		}
	}
	r.mu.Lock()
	if len(r.cache) >= r.max {
		clear(r.cache)
	}
	r.cache[id] = p
	r.mu.Unlock()
	return p, nil
}

func (r *Resolver) byHandle(id uint64) (string, error) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(int(r.rootF.Fd()), unix.NewFileHandle(fileidKernfs, b[:]), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("open cgroup %d by handle: %w", id, err)
	}
	defer unix.Close(fd)
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	return r.rel(target)
}

var errFound = errors.New("found")

func (r *Resolver) byWalk(id uint64) (string, error) {
	var found string
	err := filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Ino == id {
			found = p
			return errFound
		}
		return nil
	})
	if !errors.Is(err, errFound) {
		return "", fmt.Errorf("cgroup id %d not found under %s", id, r.root)
	}
	return r.rel(found)
}

func (r *Resolver) rel(abs string) (string, error) {
	rel, ok := strings.CutPrefix(abs, r.root)
	if !ok {
		return "", fmt.Errorf("cgroup path %q outside %q", abs, r.root)
	}
	if rel == "" {
		rel = "/"
	}
	return rel, nil
}

// ID returns the cgroup id of a directory below the mount, as BPF's
// bpf_get_current_cgroup_id reports it.
func ID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
