// Package pinlock makes one process at a time the owner of a pin set: the
// directory on bpffs where agentfenced pins its programs, links and maps.
//
// The lock is flock(2) on the pin directory itself. bpffs refuses regular
// files (open with O_CREAT fails with EACCES) but flock works on its
// directories, and the directory is the pin set's identity whatever path
// reaches it (a bind mount, a container's view of the host's bpffs). The
// kernel releases the lock when the holder exits, however it exits, so a
// kill -9 never leaves a stale lock behind.
//
// The holder's pid is read from the kernel's lock table (/proc/locks), which
// cannot be stale. The holder also leaves a record of its pid beside the
// pins, the symlink HolderRecord (bpffs allows symlinks), for people listing
// the directory and for when the kernel's table does not show the pid (the
// holder is in another pid namespace). The record is information only: the
// lock decides.
package pinlock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HolderRecord is the name of the symlink, inside the pin directory, whose
// target is the decimal pid of the lock holder.
const HolderRecord = "lock-holder"

// Lock is a held pin-set lock. It lasts until Release or until the process
// exits.
type Lock struct {
	dir string
	f   *os.File
}

// HeldError says that another process holds the lock.
type HeldError struct {
	Dir string
	// PID is the holder's pid as seen from this process, or 0 when it is not
	// visible here (another pid namespace).
	PID int
	// RecordedPID is the pid in the holder's record when PID is 0 (it is a
	// pid in the holder's own namespace), or 0.
	RecordedPID int
	// Comm is the holder's command name, when PID is known.
	Comm string
}

func (e *HeldError) Error() string {
	switch {
	case e.PID > 0 && e.Comm != "":
		return fmt.Sprintf("pin set %s is in use by pid %d (%s)", e.Dir, e.PID, e.Comm)
	case e.PID > 0:
		return fmt.Sprintf("pin set %s is in use by pid %d", e.Dir, e.PID)
	case e.RecordedPID > 0:
		return fmt.Sprintf("pin set %s is in use by a process not visible from here (it recorded pid %d, in its own pid namespace)", e.Dir, e.RecordedPID)
	default:
		return fmt.Sprintf("pin set %s is in use by another process (its pid is not visible from here)", e.Dir)
	}
}

// ErrHeld matches every *HeldError with errors.Is.
var ErrHeld = errors.New("pin set in use")

// Is makes errors.Is(err, ErrHeld) true for a *HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// TryAcquire takes the lock on the pin directory dir, creating the directory
// (mode 0700, and its parents) if it does not exist. If another process holds
// it, TryAcquire returns a *HeldError naming the holder at once.
func TryAcquire(dir string) (*Lock, error) {
	if dir == "" {
		return nil, errors.New("pinlock: empty pin directory")
	}
	dir = filepath.Clean(dir)
	// A directory replaced between open and flock (an uninstall removed it,
	// a daemon recreated it) is retried; so is a holder that let go between
	// our refused flock and our look at the lock table.
	var held *HeldError
	for range 8 {
		l, h, sure, err := try(dir)
		if err != nil || l != nil {
			return l, err
		}
		if h != nil && sure {
			return nil, h
		}
		if h != nil {
			held = h
		}
	}
	if held != nil {
		return nil, held
	}
	return nil, fmt.Errorf("pinlock: %s keeps being replaced while it is locked", dir)
}

// try makes one attempt. It returns the lock, or the holder (sure when the
// kernel's lock table showed the lock held), or neither when the attempt
// should be repeated.
func try(dir string) (_ *Lock, _ *HeldError, sure bool, _ error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, false, fmt.Errorf("pinlock: pin directory: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, nil, false, fmt.Errorf("pinlock: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, false, fmt.Errorf("pinlock: %w", err)
	}
	if !fi.IsDir() {
		f.Close()
		return nil, nil, false, fmt.Errorf("pinlock: %s is not a directory", dir)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			h, sure := holder(dir, fi)
			return nil, h, sure, nil
		}
		return nil, nil, false, fmt.Errorf("pinlock: flock %s: %w", dir, err)
	}
	// Locked; but the lock is worth something only if dir still names the
	// directory we locked. A holder that removed it (--uninstall) before
	// releasing leaves us a lock on a directory nobody will use again.
	if now, err := os.Stat(dir); err != nil || !os.SameFile(fi, now) {
		f.Close()
		return nil, nil, false, nil
	}
	l := &Lock{dir: dir, f: f}
	l.record()
	return l, nil, false, nil
}

// record writes HolderRecord: a symlink to our pid, replaced atomically.
// Failing to write it is not an error; the lock is what counts. (bpffs
// refuses names with a dot in them, hence no ".tmp".)
func (l *Lock) record() {
	pid := strconv.Itoa(os.Getpid())
	tmp := filepath.Join(l.dir, HolderRecord+"-new-"+pid)
	os.Remove(tmp)
	if os.Symlink(pid, tmp) == nil {
		if os.Rename(tmp, filepath.Join(l.dir, HolderRecord)) != nil {
			os.Remove(tmp)
		}
	}
}

// Dir is the locked pin directory.
func (l *Lock) Dir() string { return l.dir }

// Release removes the holder record and lets go of the lock. It is safe on a
// nil Lock and more than once.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	// Still ours while we hold the lock; a removed directory (uninstall)
	// has no record left to remove.
	if t, err := os.Readlink(filepath.Join(l.dir, HolderRecord)); err == nil && t == strconv.Itoa(os.Getpid()) {
		os.Remove(filepath.Join(l.dir, HolderRecord))
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Acquire takes the lock, waiting while another process holds it: it tries
// every interval until the lock is free or ctx is done. wait, if not nil, is
// called with the holder each time the holder changes (first on the first
// refusal), before Acquire waits. When ctx ends first, the error wraps both
// ctx.Err() and the last *HeldError.
func Acquire(ctx context.Context, dir string, interval time.Duration, wait func(*HeldError)) (*Lock, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("pinlock: poll interval %v: must be positive", interval)
	}
	var last *HeldError
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if last != nil {
				return nil, fmt.Errorf("%w: %w", last, ctx.Err())
			}
			return nil, ctx.Err()
		case <-t.C:
		}
		l, err := TryAcquire(dir)
		var h *HeldError
		if !errors.As(err, &h) {
			return l, err
		}
		if last == nil || h.PID != last.PID || h.RecordedPID != last.RecordedPID {
			if wait != nil {
				wait(h)
			}
		}
		last = h
		t.Reset(interval)
	}
}

// Holder returns the pid holding the lock on dir, or 0 with a nil error when
// nobody does or the holder is not visible in this pid namespace.
func Holder(dir string) (int, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	pid, _ := lockTablePID(f, fi)
	return pid, nil
}

// holder describes who holds the lock on the directory fi. found is false
// when the kernel's lock table does not show the lock held (the holder let
// go since our attempt, which is worth another; or /proc/locks is not there).
func holder(dir string, fi os.FileInfo) (h *HeldError, found bool) {
	h = &HeldError{Dir: dir}
	if f, err := os.Open("/proc/locks"); err == nil {
		h.PID, found = lockTablePID(f, fi)
		f.Close()
	}
	if h.PID > 0 {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", h.PID)); err == nil {
			h.Comm = strings.TrimSpace(string(comm))
		}
		return h, found
	}
	if t, err := os.Readlink(filepath.Join(dir, HolderRecord)); err == nil {
		if n, err := strconv.Atoi(t); err == nil && n > 0 {
			h.RecordedPID = n
		}
	}
	return h, found
}

// lockTablePID finds the holder of a flock on the file fi in r, a copy of
// /proc/locks. Lines look like
//
//	1: FLOCK  ADVISORY  WRITE 588 00:29:247915 0 EOF
//	1: -> FLOCK  ADVISORY  WRITE 631 00:29:247915 0 EOF
//
// where "->" marks a waiter, the device is major:minor in hex, and a pid of
// 0 is a holder outside this pid namespace. found is false if no process
// holds a flock on fi.
func lockTablePID(r io.Reader, fi os.FileInfo) (pid int, found bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	major, minor := unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev))
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] == "->" || f[1] != "FLOCK" {
			continue
		}
		id := strings.Split(f[5], ":")
		if len(id) != 3 {
			continue
		}
		ma, err1 := strconv.ParseUint(id[0], 16, 32)
		mi, err2 := strconv.ParseUint(id[1], 16, 32)
		ino, err3 := strconv.ParseUint(id[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || uint32(ma) != major || uint32(mi) != minor || ino != st.Ino {
			continue
		}
		p, err := strconv.Atoi(f[4])
		if err != nil {
			continue
		}
		return p, true
	}
	return 0, false
}
