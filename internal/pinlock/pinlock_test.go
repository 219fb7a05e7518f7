package pinlock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/internal/privtest"
)

// holderEnv makes the test binary a lock holder driven through stdin:
// it takes the lock on the directory named by the variable, prints
// "held PID", then obeys one command a line.
const holderEnv = "PINLOCK_TEST_HOLD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holderEnv); dir != "" {
		holdForTest(dir)
		return
	}
	os.Exit(m.Run())
}

func holdForTest(dir string) {
	l, err := TryAcquire(dir)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("held", os.Getpid())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "release":
			l.Release()
			fmt.Println("released")
		case "uninstall": // what agentfenced --uninstall does under the lock
			os.RemoveAll(dir)
			l.Release()
			fmt.Println("released")
		case "try":
			_, err := TryAcquire(dir)
			var h *HeldError
			if errors.As(err, &h) {
				fmt.Println("refused", h.PID)
			} else {
				fmt.Println("error", err)
			}
		case "ping":
			fmt.Println("pong")
		}
	}
}

// holderProc is a child process holding the lock.
type holderProc struct {
	cmd   *exec.Cmd
	stdin io.Writer
	lines chan string
}

// startHolder starts a child that takes the lock on dir and waits until it
// says it holds it.
func startHolder(t *testing.T, dir string) *holderProc {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), holderEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holderProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line := h.next(t); line != fmt.Sprintf("held %d", cmd.Process.Pid) {
		t.Fatalf("holder: %q", line)
	}
	return h
}

// next is the child's next line; the child must say it within 10 s.
func (h *holderProc) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-h.lines:
		if !ok {
			t.Fatal("holder exited")
		}
		return line
	case <-time.After(10 * time.Second):
		t.Fatal("holder said nothing for 10 s")
	}
	return ""
}

func (h *holderProc) send(t *testing.T, cmd, want string) {
	t.Helper()
	fmt.Fprintln(h.stdin, cmd)
	if got := h.next(t); got != want {
		t.Fatalf("holder, after %q: %q, want %q", cmd, got, want)
	}
}

func (h *holderProc) pid() int { return h.cmd.Process.Pid }

// waiter runs Acquire in the background.
type waiter struct {
	held chan *HeldError
	done chan error
	lock *Lock
}

func startWaiter(t *testing.T, dir string) *waiter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	w := &waiter{held: make(chan *HeldError, 4), done: make(chan error, 1)}
	go func() {
		defer cancel()
		l, err := Acquire(ctx, dir, 5*time.Millisecond, func(h *HeldError) { w.held <- h })
		w.lock = l
		w.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if w.lock != nil {
			w.lock.Release()
		}
	})
	return w
}

// waiting waits until the waiter has been refused by the holder pid, and
// checks that it has not taken the lock.
func (w *waiter) waiting(t *testing.T, pid int) {
	t.Helper()
	select {
	case h := <-w.held:
		if h.PID != pid {
			t.Fatalf("waiter refused by pid %d, want %d", h.PID, pid)
		}
	case err := <-w.done:
		t.Fatalf("waiter returned while the lock is held: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("waiter never reported the holder")
	}
	select {
	case err := <-w.done:
		t.Fatalf("waiter returned while the lock is held: %v", err)
	default:
	}
}

// acquired waits until the waiter holds the lock.
func (w *waiter) acquired(t *testing.T) *Lock {
	t.Helper()
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
		return w.lock
	case <-time.After(10 * time.Second):
		t.Fatal("waiter did not get the lock within 10 s of its release")
	}
	return nil
}

func checkHolder(t *testing.T, dir string, pid int) {
	t.Helper()
	got, err := Holder(dir)
	if err != nil || got != pid {
		t.Errorf("holder in the kernel's lock table: %d, %v; want %d", got, err, pid)
	}
	rec, err := os.Readlink(filepath.Join(dir, HolderRecord))
	if err != nil || rec != strconv.Itoa(pid) {
		t.Errorf("holder record: %q, %v; want %d", rec, err, pid)
	}
}

func TestSecondLockerRefusedWithHolderPID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	h := startHolder(t, dir)
	checkHolder(t, dir, h.pid())

	l, err := TryAcquire(dir)
	var held *HeldError
	if !errors.As(err, &held) || l != nil {
		t.Fatalf("second locker: %v, %v; want a HeldError", l, err)
	}
	if held.PID != h.pid() || held.Comm == "" || !errors.Is(err, ErrHeld) {
		t.Errorf("held: %+v, want pid %d with its command", held, h.pid())
	}
	if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("in use by pid %d (", h.pid())) || !strings.Contains(msg, dir) {
		t.Errorf("message %q names neither the holder pid nor the directory", msg)
	}
	// The refused attempt changed nothing.
	checkHolder(t, dir, h.pid())
	h.send(t, "ping", "pong")
}

// Two opens in one process are two lockers too: a daemon cannot take its own
// pin set twice.
func TestSameProcessRefusedThenAcquiresAfterRelease(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	l, err := TryAcquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkHolder(t, dir, os.Getpid())
	var held *HeldError
	if _, err := TryAcquire(dir); !errors.As(err, &held) || held.PID != os.Getpid() {
		t.Fatalf("second lock in the same process: %v", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, HolderRecord)); !os.IsNotExist(err) {
		t.Errorf("holder record left after release: %v", err)
	}
	if pid, _ := Holder(dir); pid != 0 {
		t.Errorf("held by %d after release", pid)
	}
	l2, err := TryAcquire(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
	var nilLock *Lock
	if err := nilLock.Release(); err != nil {
		t.Errorf("nil release: %v", err)
	}
}

func TestWaiterAcquiresWhenHolderIsKilled(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	h := startHolder(t, dir)
	w := startWaiter(t, dir)
	w.waiting(t, h.pid())
	if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.cmd.Wait()
	w.acquired(t)
	// The dead holder's record was replaced by ours.
	checkHolder(t, dir, os.Getpid())
}

func TestWaiterAcquiresWhenHolderReleases(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	h := startHolder(t, dir)
	w := startWaiter(t, dir)
	w.waiting(t, h.pid())
	h.send(t, "release", "released")
	w.acquired(t)
	checkHolder(t, dir, os.Getpid())
	// The former holder, still alive, is now the one refused.
	h.send(t, "try", fmt.Sprintf("refused %d", os.Getpid()))
}

// A holder that removes the pin directory before it lets go (an uninstall)
// leaves the waiter a lock on a directory nobody uses: the waiter must end up
// holding the directory now at the path, not the removed one.
func TestWaiterFollowsARemovedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	h := startHolder(t, dir)
	w := startWaiter(t, dir)
	w.waiting(t, h.pid())
	h.send(t, "uninstall", "released")
	w.acquired(t)
	// The lock table names us for the directory now at the path (a lock on
	// the removed one would not show there), and another locker is refused.
	checkHolder(t, dir, os.Getpid())
	h.send(t, "try", fmt.Sprintf("refused %d", os.Getpid()))
}

// On bpffs itself, where agentfenced's pins are: regular files cannot be
// created there (and names with a dot are refused), flock on the directory
// and the symlink record must still work.
func TestLockOnBPFFS(t *testing.T) {
	privtest.RequireRoot(t)
	mnt := privtest.BPFFS(t)
	if err := os.WriteFile(filepath.Join(mnt, "probe"), nil, 0o600); err == nil {
		t.Log("this bpffs accepts regular files")
	}
	dir := filepath.Join(mnt, "agentfence")
	h := startHolder(t, dir)
	checkHolder(t, dir, h.pid())
	if _, err := TryAcquire(dir); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", h.pid())) {
		t.Fatalf("second locker on bpffs: %v", err)
	}
	w := startWaiter(t, dir)
	w.waiting(t, h.pid())
	h.cmd.Process.Kill()
	h.cmd.Wait()
	w.acquired(t)
	checkHolder(t, dir, os.Getpid())
}

func TestAcquireGivesUpWhenContextEnds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	h := startHolder(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	calls := 0
	l, err := Acquire(ctx, dir, 10*time.Millisecond, func(*HeldError) { calls++ })
	if l != nil || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrHeld) {
		t.Fatalf("Acquire past its deadline: %v, %v", l, err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", h.pid())) {
		t.Errorf("message %q does not name the holder", err)
	}
	if calls != 1 {
		t.Errorf("wait callback called %d times for one holder, want 1", calls)
	}
	h.send(t, "ping", "pong")
	checkHolder(t, dir, h.pid())
}

func TestBadInput(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, want string }{
		{"", "empty pin directory"},
		{file, "not a directory"},
		{filepath.Join(file, "pins"), "not a directory"},
	} {
		l, err := TryAcquire(c.dir)
		if l != nil || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("TryAcquire(%q): %v, %v; want an error with %q", c.dir, l, err, c.want)
		}
		if errors.Is(err, ErrHeld) {
			t.Errorf("TryAcquire(%q): bad input reported as held", c.dir)
		}
	}
	if _, err := Acquire(context.Background(), filepath.Join(tmp, "pins"), 0, nil); err == nil || !strings.Contains(err.Error(), "must be positive") {
		t.Errorf("interval 0: %v", err)
	}
	// A failure other than "held" ends the wait at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Acquire(ctx, file, time.Millisecond, nil); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Acquire on a file: %v", err)
	}
}

func TestLockTableParsing(t *testing.T) {
	dir := t.TempDir()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	id := fmt.Sprintf("%02x:%02x:%d", major(st.Dev), minor(st.Dev), st.Ino)
	other := fmt.Sprintf("%02x:%02x:%d", major(st.Dev), minor(st.Dev), st.Ino+1)
	for _, c := range []struct {
		table string
		pid   int
		found bool
	}{
		{"", 0, false},
		{"1: FLOCK  ADVISORY  WRITE 588 " + other + " 0 EOF\n", 0, false},
		{"1: POSIX  ADVISORY  WRITE 77 " + id + " 0 EOF\n", 0, false},
		{"1: FLOCK  ADVISORY  WRITE 588 " + id + " 0 EOF\n1: -> FLOCK  ADVISORY  WRITE 631 " + id + " 0 EOF\n", 588, true},
		{"1: -> FLOCK  ADVISORY  WRITE 631 " + id + " 0 EOF\n2: FLOCK  ADVISORY  WRITE 588 " + id + " 0 EOF\n", 588, true},
		{"1: FLOCK  ADVISORY  WRITE 0 " + id + " 0 EOF\n", 0, true}, // another pid namespace
		{"garbage\n1: FLOCK ADVISORY WRITE x " + id + " 0 EOF\n", 0, false},
	} {
		pid, found := lockTablePID(strings.NewReader(c.table), fi)
		if pid != c.pid || found != c.found {
			t.Errorf("%q: pid %d found %v, want %d %v", c.table, pid, found, c.pid, c.found)
		}
	}
}

func major(dev uint64) uint64 { return (dev >> 8) & 0xfff }
func minor(dev uint64) uint64 { return (dev & 0xff) | ((dev >> 12) & 0xfff00) }

func TestHeldErrorMessages(t *testing.T) {
	for _, c := range []struct {
		e    HeldError
		want string
	}{
		{HeldError{Dir: "/p", PID: 7, Comm: "agentfenced"}, "pin set /p is in use by pid 7 (agentfenced)"},
		{HeldError{Dir: "/p", PID: 7}, "pin set /p is in use by pid 7"},
		{HeldError{Dir: "/p", RecordedPID: 9}, "pin set /p is in use by a process not visible from here (it recorded pid 9, in its own pid namespace)"},
		{HeldError{Dir: "/p"}, "pin set /p is in use by another process (its pid is not visible from here)"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.e, got, c.want)
		}
	}
}
