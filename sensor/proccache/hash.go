package proccache

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/agentfence/agentfence/sensor"
)

type hashJob struct {
	key  Key
	exe  sensor.ExeID
	path string
}

// fileKey identifies file contents cheaply: a rewrite in place changes mtime
// (and usually size) even though device and inode stay.
type fileKey struct {
	dev   uint32
	ino   uint64
	mtime int64
	size  int64
}

// hasher computes executable digests off the event path, one file at a time:
// exec storms repeat a handful of binaries, so the cache absorbs nearly all.
type hasher struct {
	c        *Cache
	jobs     chan *hashJob
	maxSize  int64
	procRoot string
	done     chan struct{}
	once     sync.Once

	mu     sync.Mutex
	byFile map[fileKey]string
	byExe  map[sensor.ExeID]string // last digest per inode: provisional hint

	queued, finished atomic.Uint64
}

func newHasher(c *Cache, queue int, maxSize int64, procRoot string) *hasher {
	h := &hasher{
		c: c, jobs: make(chan *hashJob, queue), maxSize: maxSize, procRoot: procRoot,
		done: make(chan struct{}), byFile: map[fileKey]string{}, byExe: map[sensor.ExeID]string{},
	}
	go h.run()
	return h
}

func (h *hasher) stop() {
	h.once.Do(func() { close(h.done) })
}

func (h *hasher) counts() (uint64, uint64) { return h.queued.Load(), h.finished.Load() }

func (h *hasher) known(id sensor.ExeID) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.byExe[id]
	return s, ok
}

func (h *hasher) enqueue(j *hashJob) {
	select {
	case h.jobs <- j:
		h.queued.Add(1)
	default:
		h.c.setHash(j.key, j.exe, "", "", false, HashSkipped)
	}
}

func (h *hasher) run() {
	for {
		select {
		case <-h.done:
			return
		case j := <-h.jobs:
			h.do(j)
			h.finished.Add(1)
		}
	}
}

func (h *hasher) do(j *hashJob) {
	f, path, deleted := OpenExe(h.procRoot, j.key.TGID, j.path, j.exe)
	if f == nil {
		h.c.setHash(j.key, j.exe, "", "", false, HashUnavailable)
		return
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		h.c.setHash(j.key, j.exe, path, "", deleted, HashUnavailable)
		return
	}
	if st.Size > h.maxSize {
		h.c.setHash(j.key, j.exe, path, "", deleted, HashTooLarge)
		return
	}
	fk := fileKey{dev: j.exe.Dev, ino: j.exe.Ino, mtime: st.Mtim.Nano(), size: st.Size}
	h.mu.Lock()
	sum, ok := h.byFile[fk]
	h.mu.Unlock()
	if !ok {
		d := sha256.New()
		if _, err := io.Copy(d, f); err != nil {
			h.c.setHash(j.key, j.exe, path, "", deleted, HashUnavailable)
			return
		}
		sum = hex.EncodeToString(d.Sum(nil))
		h.mu.Lock()
		if len(h.byFile) >= 8192 {
			clear(h.byFile)
			clear(h.byExe)
		}
		h.byFile[fk] = sum
		h.byExe[j.exe] = sum
		h.mu.Unlock()
	}
	h.c.setHash(j.key, j.exe, path, sum, deleted, HashOK)
}

// OpenExe finds the bytes of the executable a process started: through
// <procRoot>/<tgid>/exe while the process lives (this works even if the
// file was deleted or replaced, or lives in another mount namespace), else
// through the exec path. Either way the inode must be the one the kernel
// reported, or it would be some other file. path is where the file was
// found; nil when neither way leads to it.
func OpenExe(procRoot string, tgid uint32, execPath string, id sensor.ExeID) (f *os.File, path string, deleted bool) {
	link := filepath.Join(procRoot, strconv.FormatUint(uint64(tgid), 10), "exe")
	if f, err := os.Open(link); err == nil {
		if matches(f, id) {
			p, _ := os.Readlink(link)
			p, deleted = strings.CutSuffix(p, " (deleted)")
			return f, p, deleted
		}
		f.Close()
	}
	if filepath.IsAbs(execPath) {
		if f, err := os.Open(execPath); err == nil {
			if matches(f, id) {
				return f, execPath, false
			}
			f.Close()
		}
	}
	return nil, "", false
}

func matches(f *os.File, id sensor.ExeID) bool {
	var st syscall.Stat_t
	return syscall.Fstat(int(f.Fd()), &st) == nil && sensor.ExeIDOf(&st) == id
}

// setHash records a worker result on the entry if it still runs that image.
func (c *Cache) setHash(k Key, exe sensor.ExeID, path, sum string, deleted bool, state string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	e := c.get(k)
	if e == nil || e.Exe != exe {
		return // gone, or exec'd again; the newer job wins
	}
	e.HashState = state
	e.ExeSHA256 = sum
	if path != "" {
		e.ExePath, e.ExeDeleted = path, deleted
	}
}
