//go:build linux

package sensor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

const helperEnv = "AF_SENSOR_TEST_HELPER"

// TestMain lets the fork-inheritance test build a process tree out of the
// test binary itself, so every hop is a real fork+exec it controls.
func TestMain(m *testing.M) {
	kerneltest.MaybeRunProbe()
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "root":
		// Fork only once the test has bound our tgid.
		bufio.NewReader(os.Stdin).ReadString('\n')
		spawnHelper("child", true)
		waitForSignal()
	case "child":
		fmt.Printf("child %d\n", os.Getpid())
		// No parent-death signal: the grandchild must outlive the child.
		spawnHelper("grandchild", false)
		waitForSignal()
	case "threadexec":
		threadExec()
	case "grandchild", "sibling":
		fmt.Printf("%s %d\n", os.Getenv(helperEnv), os.Getpid())
		waitForSignal()
	case "ctl":
		ctl()
	case "park":
		waitForSignal()
	}
}

func init() {
	if os.Getenv(helperEnv) == "threadexec" {
		// Pin main to the leader thread so the exec below runs on another.
		runtime.LockOSThread()
	}
}

// threadExec execs from a thread that is not the group leader.
func threadExec() {
	go func() {
		runtime.LockOSThread()
		if syscall.Gettid() == os.Getpid() {
			fmt.Fprintln(os.Stderr, "exec would run on the leader")
			os.Exit(3)
		}
		err := syscall.Exec("/bin/true", []string{"/bin/true", os.Getenv("AF_MARKER")}, nil)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}()
	waitForSignal()
}

// waitForSignal parks a helper until the test kills it.
func waitForSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	<-c
	os.Exit(0)
}

func spawnHelper(mode string, pdeath bool) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if pdeath {
		// Die with the test, whatever happens to the intermediate processes.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	return cmd
}

// loaded is a running set of process programs with their events fanned out
// to a buffered channel, so tests can wait on events with a deadline.
type loaded struct {
	*ProcessPrograms
	events chan Event
	done   chan error
}

func load(t testing.TB, opts ProcessOptions) *loaded {
	t.Helper()
	privtest.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	p, err := LoadProcessPrograms(opts)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	l := &loaded{ProcessPrograms: p, events: make(chan Event, 1<<18), done: make(chan error, 1)}
	go func() {
		for {
			ev, err := p.ReadEvent()
			if err != nil {
				l.done <- err
				close(l.events)
				return
			}
			l.events <- ev
		}
	}()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		if err := <-l.done; !errors.Is(err, ErrClosed) {
			t.Errorf("reader ended with %v, want ErrClosed", err)
		}
	})
	return l
}

// waitFor returns the first event satisfying match, failing at the deadline.
func (l *loaded) waitFor(t testing.TB, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-l.events:
			if !ok {
				t.Fatalf("event stream ended waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// testCgroup creates a child cgroup of the unified hierarchy for the spawned
// process, so the cgroup id check cannot pass by accident with the root's.
func testCgroup(t *testing.T) (fd int, id uint64, rel string) {
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	self, err := procfs.ProcCgroupPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, self, fmt.Sprintf("af-sensor-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	id, err = cgroupmeta.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	rel, _ = strings.CutPrefix(dir, mnt)
	return int(f.Fd()), id, rel
}

func TestExecExitEvents(t *testing.T) {
	l := load(t, ProcessOptions{})
	cgFD, cgID, cgPath := testCgroup(t)
	marker := fmt.Sprintf("af-marker-%d-%d", os.Getpid(), time.Now().UnixNano())

	cmd := exec.Command("/bin/sh", "-c", "exit 7", marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgFD}
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("run: %v", err)
	}
	pid := uint32(cmd.Process.Pid)

	ex := l.waitFor(t, "exec", func(ev Event) bool {
		e, ok := ev.(*ExecEvent)
		return ok && e.TGID == pid
	}).(*ExecEvent)
	if ex.Filename != "/bin/sh" {
		t.Errorf("filename %q", ex.Filename)
	}
	if want := []string{"/bin/sh", "-c", "exit 7", marker}; !slices.Equal(ex.Args, want) {
		t.Errorf("args %q, want %q", ex.Args, want)
	}
	if ex.ArgsTruncated || ex.ArgsFault || ex.Interp != "" {
		t.Errorf("flags: %+v", ex)
	}
	if ex.PPID != uint32(os.Getpid()) || ex.PID != pid {
		t.Errorf("ppid %d pid %d, want %d %d", ex.PPID, ex.PID, os.Getpid(), pid)
	}
	if ex.UID != uint32(os.Getuid()) || ex.GID != uint32(os.Getgid()) {
		t.Errorf("uid/gid %d/%d", ex.UID, ex.GID)
	}
	if ex.CgroupID != cgID {
		t.Errorf("cgroup id %d, want %d (%s)", ex.CgroupID, cgID, cgPath)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/bin/sh", &st); err != nil {
		t.Fatal(err)
	}
	// kernel dev encoding vs the userspace one
	major, minor := uint64(st.Dev>>8&0xfff|st.Dev>>32&^0xfff), uint64(st.Dev&0xff|st.Dev>>12&^0xff)
	if ex.Exe.Ino != st.Ino || uint64(ex.Exe.Major()) != major || uint64(ex.Exe.Minor()) != minor {
		t.Errorf("exe %+v, want ino %d dev %d:%d", ex.Exe, st.Ino, major, minor)
	}
	if ex.StartTime == 0 || ex.Ktime < ex.StartTime {
		t.Errorf("start %d ktime %d", ex.StartTime, ex.Ktime)
	}

	// The resolver must agree with the kernel about the id.
	if mnt, err := procfs.Cgroup2Mount(); err == nil {
		r, err := cgroupmeta.NewResolver(mnt, 16)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if p, err := r.Path(ex.CgroupID); err != nil || p != cgPath {
			t.Errorf("resolve %d: %q %v, want %q", ex.CgroupID, p, err, cgPath)
		}
	}

	xt := l.waitFor(t, "exit", func(ev Event) bool {
		e, ok := ev.(*ExitEvent)
		return ok && e.TGID == pid
	}).(*ExitEvent)
	if xt.ExitCode() != 7 || xt.Signal() != 0 {
		t.Errorf("exit code %d signal %d (status %#x)", xt.ExitCode(), xt.Signal(), xt.Status)
	}
	if xt.StartTime != ex.StartTime {
		t.Errorf("exit start %d != exec start %d", xt.StartTime, ex.StartTime)
	}
	var exe ExeIDValue
	if err := l.ProcExe().Lookup(pid, &exe); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("proc_exe still has %d after exit: %v", pid, err)
	}
}

// ExeIDValue mirrors struct exe_id for map lookups in tests.
type ExeIDValue = processExeId

func TestExecTrueAndSignal(t *testing.T) {
	l := load(t, ProcessOptions{})
	marker := fmt.Sprintf("af-true-%d", time.Now().UnixNano())
	cmd := exec.Command("/bin/true", marker)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ex := l.waitFor(t, "exec", func(ev Event) bool {
		e, ok := ev.(*ExecEvent)
		return ok && slices.Contains(e.Args, marker)
	}).(*ExecEvent)
	if ex.Filename != "/bin/true" || !slices.Equal(ex.Args, []string{"/bin/true", marker}) {
		t.Errorf("exec %q %q", ex.Filename, ex.Args)
	}
	cmd = exec.Command("/bin/sh", "-c", "kill -9 $$")
	_ = cmd.Run()
	pid := uint32(cmd.Process.Pid)
	xt := l.waitFor(t, "exit", func(ev Event) bool {
		e, ok := ev.(*ExitEvent)
		return ok && e.TGID == pid
	}).(*ExitEvent)
	if xt.Signal() != int(syscall.SIGKILL) || xt.ExitCode() != -1 {
		t.Errorf("signal %d code %d", xt.Signal(), xt.ExitCode())
	}
}

func TestLongArgvTruncated(t *testing.T) {
	l := load(t, ProcessOptions{})
	long := strings.Repeat("x", 3000)
	cmd := exec.Command("/bin/true", "af-long", long)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	ex := l.waitFor(t, "exec", func(ev Event) bool {
		e, ok := ev.(*ExecEvent)
		return ok && e.TGID == pid
	}).(*ExecEvent)
	if !ex.ArgsTruncated {
		t.Error("not marked truncated")
	}
	if n := len(strings.Join(ex.Args, "\x00")); n != ArgvMax {
		t.Errorf("argv bytes %d, want %d", n, ArgvMax)
	}
	if len(ex.Args) != 3 || ex.Args[1] != "af-long" || !strings.HasPrefix(long, ex.Args[2]) {
		t.Errorf("args %.60q", ex.Args)
	}
}

func TestManyShortLivedProcesses(t *testing.T) {
	n := privtest.Rounds(10000)
	l := load(t, ProcessOptions{})
	marker := fmt.Sprintf("af-many-%d", time.Now().UnixNano())

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if err := exec.Command("/bin/true", marker, strconv.Itoa(i)).Run(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}

	seen := make([]bool, n)
	execs, exits := 0, 0
	pids := map[uint32]bool{}
	// A stall, not a total time, means lost events: under TCG (make vmtest)
	// the 10,000 processes take minutes to start.
	const stall = 30 * time.Second
	deadline := time.NewTimer(stall)
	defer deadline.Stop()
	for execs < n || exits < n {
		select {
		case ev := <-l.events:
			if _, quiet := ev.(*Quiet); !quiet {
				deadline.Reset(stall)
			}
			switch e := ev.(type) {
			case *ExecEvent:
				if len(e.Args) == 3 && e.Args[1] == marker {
					i, err := strconv.Atoi(e.Args[2])
					if err != nil || i < 0 || i >= n || seen[i] {
						t.Fatalf("bad or duplicate marker %q", e.Args)
					}
					seen[i] = true
					execs++
					pids[e.TGID] = true
				}
			case *ExitEvent:
				// Every exec precedes its exit in the single ring buffer.
				if pids[e.TGID] {
					delete(pids, e.TGID)
					exits++
				}
			}
		case err := <-errs:
			t.Fatal(err)
		case <-deadline.C:
			lost, _ := l.Lost()
			t.Fatalf("no event for %s: saw %d execs, %d exits of %d (lost %d)", stall, execs, exits, n, lost)
		}
	}
	wg.Wait()
	if lost, err := l.Lost(); err != nil || lost != 0 {
		t.Errorf("lost %d %v", lost, err)
	}
}

// newPidSessions creates a map shaped like the gate's, as the daemon would.
func newPidSessions(t *testing.T) *ebpf.Map {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "pid_sessions", Type: ebpf.Hash, KeySize: 4,
		ValueSize: uint32(8 + 8), MaxEntries: 65536,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestForkInheritsSession(t *testing.T) {
	privtest.RequireRoot(t)
	sessions := newPidSessions(t)
	l := load(t, ProcessOptions{PidSessions: sessions})

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	start := func(mode string, stdin *os.File) *exec.Cmd {
		cmd := exec.Command("/proc/self/exe")
		cmd.Env = append(os.Environ(), helperEnv+"="+mode)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, pw, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	root := start("root", inR)
	sibling := start("sibling", nil)
	inR.Close()
	pw.Close()

	want := processBinding{Slot: 42, Gen: 7}
	// A binding counts while its slot holds that generation.
	if err := l.Sessions().Put(want.Slot, processSession{Gen: want.Gen, State: 1}); err != nil {
		t.Fatal(err)
	}
	if err := sessions.Put(uint32(root.Process.Pid), want); err != nil {
		t.Fatal(err)
	}
	if _, err := inW.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}

	pids := map[string]uint32{}
	sc := bufio.NewScanner(pr)
	for len(pids) < 3 && sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 {
			p, _ := strconv.Atoi(f[1])
			pids[f[0]] = uint32(p)
		}
	}
	t.Cleanup(func() { syscall.Kill(int(pids["grandchild"]), syscall.SIGKILL) })
	if len(pids) < 3 {
		t.Fatalf("helpers reported %v (%v)", pids, sc.Err())
	}
	if pids["sibling"] != uint32(sibling.Process.Pid) {
		t.Fatalf("sibling pid %d vs %d", pids["sibling"], sibling.Process.Pid)
	}

	// The bindings' netns is the process programs' record of the network
	// namespace; only the session counts here.
	same := func(a, b processBinding) bool { return a.Slot == b.Slot && a.Gen == b.Gen }
	for _, who := range []string{"child", "grandchild"} {
		var got processBinding
		if err := sessions.Lookup(pids[who], &got); err != nil || !same(got, want) {
			t.Errorf("%s %d: binding %+v %v, want %+v", who, pids[who], got, err, want)
		}
	}
	var got processBinding
	if err := sessions.Lookup(pids["sibling"], &got); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("sibling has binding %+v (%v)", got, err)
	}

	// Fork events for the bound subtree say they inherited.
	for _, who := range []string{"child", "grandchild"} {
		fe := l.waitFor(t, "fork of "+who, func(ev Event) bool {
			e, ok := ev.(*ForkEvent)
			return ok && e.TGID == pids[who]
		}).(*ForkEvent)
		if !fe.SessionInherited {
			t.Errorf("fork of %s not marked inherited: %+v", who, fe)
		}
	}

	// Killing the child removes its binding at exit; the grandchild, now
	// reparented, keeps its own.
	if err := syscall.Kill(int(pids["child"]), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "exit of child", func(ev Event) bool {
		e, ok := ev.(*ExitEvent)
		return ok && e.TGID == pids["child"]
	})
	if err := sessions.Lookup(pids["child"], &got); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("child binding survived exit: %+v %v", got, err)
	}
	if err := sessions.Lookup(pids["grandchild"], &got); err != nil || !same(got, want) {
		t.Errorf("grandchild lost binding: %+v %v", got, err)
	}
	syscall.Kill(int(pids["grandchild"]), syscall.SIGKILL)
}

func TestLostIsReadable(t *testing.T) {
	l := load(t, ProcessOptions{RingBufferSize: 1 << 16})
	if _, err := l.Lost(); err != nil {
		t.Fatal(err)
	}
}

func TestThreadExecKeepsTgid(t *testing.T) {
	l := load(t, ProcessOptions{})
	marker := fmt.Sprintf("af-threadexec-%d", time.Now().UnixNano())
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), helperEnv+"=threadexec", "AF_MARKER="+marker)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	var fork *ForkEvent
	ev := l.waitFor(t, "exec from thread", func(ev Event) bool {
		switch e := ev.(type) {
		case *ForkEvent:
			if e.TGID == pid {
				fork = e
			}
			if e.ParentTGID == pid {
				t.Errorf("thread creation in %d reported as fork: %+v", pid, e)
			}
		case *ExecEvent:
			return e.TGID == pid && slices.Contains(e.Args, marker)
		}
		return false
	}).(*ExecEvent)
	if ev.PID == ev.TGID {
		t.Errorf("exec reported from the leader (pid %d); want the calling thread", ev.PID)
	}
	if fork == nil || fork.StartTime != ev.StartTime {
		t.Errorf("start time changed across thread exec: fork %+v exec %d", fork, ev.StartTime)
	}
}

// TestSync: with a poll interval no test waits out, an exec is returned
// before Sync returns only because Sync asked for it.
func TestSync(t *testing.T) {
	l := load(t, ProcessOptions{PollInterval: time.Hour})
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l.Sync(ctx)
	if ctx.Err() != nil {
		t.Fatal("Sync did not return")
	}
	for {
		select {
		case ev := <-l.events:
			if e, ok := ev.(*ExecEvent); ok && e.TGID == uint32(cmd.Process.Pid) {
				return
			}
		default:
			t.Fatal("the exec was not returned before Sync returned")
		}
	}
}
