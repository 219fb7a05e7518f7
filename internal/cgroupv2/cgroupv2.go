// Package cgroupv2 finds the cgroup v2 hierarchy and manages the session
// cgroups agentfence creates in it.
package cgroupv2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/procfs"
)

// Root returns the mount point of the cgroup v2 hierarchy (hybrid layouts
// mount it at /sys/fs/cgroup/unified).
func Root() (string, error) {
	p, err := procfs.Cgroup2Mount()
	if errors.Is(err, procfs.ErrNoCgroup2) {
		return "", errors.New("no cgroup v2 file system is mounted (agentfence needs cgroup v2: mount -t cgroup2 none /sys/fs/cgroup)")
	}
	return p, err
}

// ID returns the cgroup id of the cgroup directory at path: the kernfs inode
// number, which is what bpf_get_current_cgroup_id reports.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	return st.Ino, nil
}

// Populated reports whether any process lives in the cgroup or below it.
func Populated(path string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("populated ")); ok {
			return string(v) == "1", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated line", path)
}

// WaitEmpty blocks until the cgroup has no processes or timeout passes
// (timeout < 0 waits for ever). It sleeps in poll(2) on cgroup.events, which
// the kernel signals on every change of the populated state.
func WaitEmpty(path string, timeout time.Duration) error {
	f, err := os.Open(filepath.Join(path, "cgroup.events"))
	if err != nil {
		return err
	}
	defer f.Close()
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		pop, err := Populated(path)
		if err != nil {
			return err
		}
		if !pop {
			return nil
		}
		wait := -1
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return fmt.Errorf("cgroup %s still has processes after %s", path, timeout)
			}
			wait = int(left.Milliseconds()) + 1
		}
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
		if _, err := unix.Poll(fds, wait); err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Kill kills every process in the cgroup (cgroup.kill, kernel 5.14+), falling
// back to SIGKILL for each listed pid on older kernels.
func Kill(path string) error {
	err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	return nil
}

// RemoveWhenEmpty waits up to timeout for the cgroup's processes to exit,
// then removes it. A missing cgroup is not an error.
func RemoveWhenEmpty(path string, timeout time.Duration) error {
	if err := WaitEmpty(path, timeout); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return Remove(path)
}

// Remove removes an empty cgroup. A missing cgroup is not an error.
func Remove(path string) error {
	if err := unix.Rmdir(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	return nil
}

// Move writes pid into the cgroup's cgroup.procs.
func Move(path string, pid int) error {
	return os.WriteFile(filepath.Join(path, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0)
}

// Of returns the cgroup v2 path (relative to the hierarchy root) of pid.
func Of(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("pid %d has no cgroup v2 entry", pid)
}

// Manager creates and destroys session cgroups below Base.
type Manager struct {
	Root string // the cgroup v2 mount point
	Base string // e.g. <Root>/agentfence
}

// Create makes the cgroup name below parent (Base when parent is ""). It
// fails if it already exists, so two sessions can never share one. A
// non-negative owner is given the directory and its cgroup.procs, so that
// the owner may start processes in it.
func (m Manager) Create(parent, name string, owner int) (string, uint64, error) {
	if name == "" || strings.ContainsAny(name, "/.") {
		return "", 0, fmt.Errorf("bad cgroup name %q", name)
	}
	if parent == "" {
		parent = m.Base
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return "", 0, err
		}
	}
	path := filepath.Join(parent, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return "", 0, fmt.Errorf("create cgroup: %w", err)
	}
	id, err := ID(path)
	if err == nil && owner >= 0 {
		for _, p := range []string{path, filepath.Join(path, "cgroup.procs"), filepath.Join(path, "cgroup.threads")} {
			if err = os.Chown(p, owner, -1); err != nil {
				break
			}
		}
	}
	if err != nil {
		_ = Remove(path)
		return "", 0, err
	}
	return path, id, nil
}

// Destroy kills whatever still runs in the cgroup, waits for it to empty and
// removes it.
func (m Manager) Destroy(path string) error {
	pop, err := Populated(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if pop {
		if err := Kill(path); err != nil {
			return err
		}
		if err := WaitEmpty(path, 10*time.Second); err != nil {
			return err
		}
	}
	return Remove(path)
}

// Kill kills every process in the cgroup and below.
func (m Manager) Kill(path string) error { return Kill(path) }

// KillPIDs sends SIGKILL to each process.
func (m Manager) KillPIDs(pids []uint32) {
	for _, pid := range pids {
		_ = unix.Kill(int(pid), unix.SIGKILL)
	}
}

// Procs lists the processes in the cgroup and its descendants.
func (m Manager) Procs(path string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil // removed meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// Of returns the cgroup directory of pid.
func (m Manager) Of(pid int) (string, error) {
	rel, err := Of(pid)
	if err != nil {
		return "", err
	}
	return filepath.Join(m.Root, rel), nil
}

// FindContainer finds the cgroup of a container by id (or a prefix of it):
// the deepest directory whose name contains it, as runtimes name them
// (cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, <id>).
func (m Manager) FindContainer(id string) (string, uint64, error) {
	return m.find("container "+id, func(name string) bool { return strings.Contains(name, id) }, true)
}

// FindPod finds the cgroup of a Kubernetes pod by its UID, as the kubelet
// names it: pod<uid> (cgroupfs driver) or kubepods[-<qos>]-pod<uid with
// underscores>.slice (systemd driver). Its containers are below it.
func (m Manager) FindPod(uid string) (string, uint64, error) {
	slice := "-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	return m.find("pod "+uid, func(name string) bool {
		return name == "pod"+uid || strings.HasPrefix(name, "kubepods") && strings.HasSuffix(name, slice)
	}, false)
}

// find walks the hierarchy for the deepest, or the shallowest, directory
// whose name matches.
func (m Manager) find(what string, match func(name string) bool, deepest bool) (string, uint64, error) {
	var found string
	const maxDirs = 100000
	seen := 0
	err := filepath.WalkDir(m.Root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if seen++; seen > maxDirs {
			return filepath.SkipAll
		}
		if match(d.Name()) && (found == "" || deepest == (len(p) > len(found))) {
			found = p
		}
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	if found == "" {
		return "", 0, fmt.Errorf("no cgroup for %s", what)
	}
	cid, err := ID(found)
	return found, cid, err
}
