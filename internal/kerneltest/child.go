package kerneltest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

const (
	envRequest = "AGENTFENCE_PROBE"
	envDepth   = "AGENTFENCE_PROBE_DEPTH"
	envDetach  = "AGENTFENCE_PROBE_DETACH"
	envStdout  = "AGENTFENCE_PROBE_STDOUT"
	envGate    = "AGENTFENCE_PROBE_GATE"
)

// child is the probe process: where its results go, its stdin (the
// test's go-aheads and the operations sent with Proc.Do), and the
// connections DNSQuery holds.
type child struct {
	pid  int
	out  *os.File
	in   *bufio.Reader
	held []int
}

// report writes one result.
func (c *child) report(r Result) {
	r.PID = c.pid
	b, _ := json.Marshal(r)
	c.out.Write(append(b, '\n'))
}

// line waits for a line on stdin; false once stdin is closed.
func (c *child) line() bool {
	_, err := c.in.ReadString('\n')
	return err == nil
}

// MaybeRunProbe runs the probe and exits if this process was started as
// one; otherwise it returns.
func MaybeRunProbe() {
	req := os.Getenv(envRequest)
	if req == "" {
		return
	}
	c := &child{pid: os.Getpid(), out: os.NewFile(3, "result"), in: bufio.NewReader(os.Stdin)}
	if os.Getenv(envStdout) != "" {
		c.out = os.Stdout
	}
	ops, err := decodeRequest(req)
	if err != nil {
		c.report(Result{Err: "request: " + err.Error()})
		os.Exit(1)
	}
	if os.Getenv(envGate) != "" {
		// Wait for the test's go-ahead before going on, so it can act on
		// this process first (e.g. bind its pid).
		c.report(Result{Err: Ready})
		c.line()
		os.Unsetenv(envGate)
	}
	if depth, _ := strconv.Atoi(os.Getenv(envDepth)); depth > 0 {
		c.spawn(depth)
	}
	for _, op := range ops {
		op.run(c)
	}
	os.Exit(0)
}

// spawn starts the next generation and exits; a detached probe exits at
// once, so the descendant is reparented like a daemon.
func (c *child) spawn(depth int) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", envDepth, depth-1))
	cmd.ExtraFiles = []*os.File{c.out}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	detach := os.Getenv(envDetach) != ""
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		c.report(failed("spawn", err))
		os.Exit(1)
	}
	if !detach {
		cmd.Wait()
	}
	os.Exit(0)
}
