package kerneltest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Options shape a probe run.
type Options struct {
	// Depth > 0 runs the probe in a descendant that many generations down.
	Depth int
	// Detach makes each intermediate generation exit without waiting, so
	// the probe runs in a reparented, setsid'd daemon.
	Detach bool
	// Credential runs the probe as another user.
	Credential *syscall.Credential
	// Binary is the probe executable (default: this test binary). A probe
	// run as another user needs a copy it may execute.
	Binary string
}

// env is the environment that makes the test binary a probe running ops.
func (o Options) env(tb testing.TB, ops []Op) []string {
	tb.Helper()
	req, err := encodeRequest(ops)
	if err != nil {
		tb.Fatalf("probe request: %v", err)
	}
	env := []string{envRequest + "=" + req, fmt.Sprintf("%s=%d", envDepth, o.Depth)}
	if o.Detach {
		env = append(env, envDetach+"=1")
	}
	return env
}

// Env returns the environment that makes the test binary, started by some
// other program (agentfence run), run ops and write its results on stdout
// (ParseResults reads them). Only opts' Depth and Detach apply.
func Env(tb testing.TB, opts Options, ops ...Op) []string {
	tb.Helper()
	return append(opts.env(tb, ops), envStdout+"=1")
}

// command builds a probe: the test binary (or opts.Binary) running ops,
// its results going to w, to be started directly in the cgroup at
// cgroupPath. Call the returned func once it has started.
func command(tb testing.TB, cgroupPath string, opts Options, w *os.File, ops []Op, env ...string) (*exec.Cmd, func()) {
	tb.Helper()
	bin := os.Args[0]
	if opts.Binary != "" {
		bin = opts.Binary
	}
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), opts.env(tb, ops)...), env...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: opts.Credential}
	if cgroupPath == "" {
		return cmd, func() {}
	}
	cg, err := os.Open(cgroupPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	return cmd, func() { cg.Close() }
}

// Run starts the test binary as a probe inside the cgroup at cgroupPath
// (clone3 CLONE_INTO_CGROUP; "": this process's) and returns each
// operation's result, in order. It returns when every process holding the
// result pipe has exited.
func Run(tb testing.TB, cgroupPath string, opts Options, ops ...Op) []Result {
	tb.Helper()
	out, _, output := RunStatus(tb, cgroupPath, opts, ops...)
	if len(out) != len(ops) {
		tb.Fatalf("probe gave %d results for %d operations: %s", len(out), len(ops), output)
	}
	return out
}

// RunStatus is Run for a probe that may not finish its operations (one the
// kernel kills): the results it gave, how it ended, and what it wrote.
func RunStatus(tb testing.TB, cgroupPath string, opts Options, ops ...Op) ([]Result, *os.ProcessState, string) {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	defer r.Close()
	cmd, started := command(tb, cgroupPath, opts, w, ops)
	defer started()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		tb.Fatalf("start probe: %v", err)
	}
	w.Close()
	// A corpus replay takes its time under emulation.
	r.SetReadDeadline(time.Now().Add(5 * time.Minute))
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		tb.Fatalf("read probe results: %v (stderr: %s)", err, stderr.String())
	}
	cmd.Wait()
	output := fmt.Sprintf("%q (stderr: %s)", buf.String(), stderr.String())
	out, err := ParseResults(buf.String())
	if err != nil {
		tb.Fatalf("%v (stderr: %s)", err, stderr.String())
	}
	return out, cmd.ProcessState, output
}

// Proc is a probe started with Start, reporting result by result.
type Proc struct {
	PID   int
	cmd   *exec.Cmd
	out   *os.File
	lines *bufio.Scanner
	stdin io.WriteCloser
	tb    testing.TB
}

// Start starts a probe like Run but returns at once. With gate set the
// probe first reports Ready and waits for Go before acting.
func Start(tb testing.TB, cgroupPath string, opts Options, gate bool, ops ...Op) *Proc {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	var env []string
	if gate {
		env = append(env, envGate+"=1")
	}
	cmd, started := command(tb, cgroupPath, opts, w, ops, env...)
	defer started()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start probe: %v", err)
	}
	w.Close()
	p := &Proc{PID: cmd.Process.Pid, cmd: cmd, out: r, lines: bufio.NewScanner(r), stdin: stdin, tb: tb}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); r.Close() })
	return p
}

// Next returns the next result; it fails the test after a minute without
// one.
func (p *Proc) Next() Result {
	p.tb.Helper()
	p.out.SetReadDeadline(time.Now().Add(time.Minute))
	if !p.lines.Scan() {
		p.tb.Fatalf("probe %d: no more results: %v", p.PID, p.lines.Err())
	}
	var r Result
	if err := json.Unmarshal(p.lines.Bytes(), &r); err != nil {
		p.tb.Fatalf("probe %d: bad result %q: %v", p.PID, p.lines.Text(), err)
	}
	return r
}

// Wait waits for the probe to exit and says how it ended.
func (p *Proc) Wait() *os.ProcessState {
	p.cmd.Wait()
	return p.cmd.ProcessState
}

// Go lets a gated probe go on, or a bench run its next batch.
func (p *Proc) Go() { p.stdin.Write([]byte("go\n")) }

// Do sends op to the probe's running operation (UDPSend, UDPRecv to a
// UDPSocket).
func (p *Proc) Do(op Op) {
	p.tb.Helper()
	b, err := encodeOp(op)
	if err != nil {
		p.tb.Fatal(err)
	}
	p.stdin.Write(append(b, '\n'))
}

// ExecutableCopy copies the test binary to a directory every user may read
// and returns its path, for probes run with another Credential.
func ExecutableCopy(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "agentfence-probe")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		tb.Fatal(err)
	}
	path := dir + "/probe"
	if err := os.WriteFile(path, b, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return path
}
