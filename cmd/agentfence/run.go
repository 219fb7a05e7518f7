package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/agentfence/agentfence/api"
	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/scope"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type runOptions struct {
	socket string
	req    attribution.OpenRequest
	argv   []string
}

func parseRun(args []string, stderr io.Writer) (runOptions, error) {
	var o runOptions
	var allow listFlag
	fs := flag.NewFlagSet("agentfence run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: agentfence run [--socket PATH] --intent TEXT --allow RULE ... [--mode enforce|audit] [--ttl DURATION] -- CMD [ARGS...]")
		fmt.Fprintln(stderr, "RULE: [essential,][exe=PATH,][tcp://|udp://]ADDR[/PREFIX][:PORT[-PORT]], IPv6 in brackets")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.socket, "socket", api.DefaultSocket, "agentfenced API socket")
	fs.StringVar(&o.req.Intent, "intent", "", "why this session exists (required)")
	fs.Var(&allow, "allow", "scope rule (repeatable)")
	fs.StringVar(&o.req.Mode, "mode", "enforce", "enforce (deny with EPERM) or audit (allow, record would_deny)")
	ttl := fs.Duration("ttl", 0, "session lifetime (default: the daemon's)")
	if err := fs.Parse(args); err != nil {
		return o, usageError{err.Error()}
	}
	o.argv = fs.Args()
	o.req.Allow = allow
	// Check locally what can be checked, so a mistake is reported even when
	// the daemon is not running; the daemon checks again.
	switch {
	case strings.TrimSpace(o.req.Intent) == "":
		return o, usageError{"--intent is required: say why this session exists"}
	case o.req.Mode != "enforce" && o.req.Mode != "audit":
		return o, usageError{fmt.Sprintf("--mode %q: want enforce or audit", o.req.Mode)}
	case *ttl < 0:
		return o, usageError{fmt.Sprintf("--ttl %s must be positive", *ttl)}
	case len(o.argv) == 0:
		return o, usageError{"no command given after --"}
	}
	if *ttl > 0 {
		o.req.TTL = ttl.String()
	}
	for _, a := range allow {
		if _, err := scope.Parse(a); err != nil {
			return o, usageError{"--allow: " + err.Error()}
		}
	}
	return o, nil
}

// runCmd opens a session, starts the command directly inside the session's
// cgroup (clone3 CLONE_INTO_CGROUP, so not one instruction runs outside it),
// waits for it and every descendant to finish, closes the session and exits
// with the command's status.
func runCmd(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseRun(args, stderr)
	if err != nil {
		return err
	}
	path, err := exec.LookPath(o.argv[0])
	if err != nil {
		return err
	}
	client := api.NewClient(o.socket)
	sess, err := client.Open(ctx, o.req)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := client.Close(cctx, sess.ID); err != nil {
			fmt.Fprintf(stderr, "agentfence: close session %s: %v\n", sess.ID, err)
		}
	}()

	cg, err := os.Open(sess.Cgroup)
	if err != nil {
		return fmt.Errorf("open session cgroup: %w", err)
	}
	defer cg.Close()
	cmd := exec.Command(path, o.argv[1:]...)
	cmd.Args[0] = o.argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "AGENTFENCE_SESSION="+sess.ID)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s in session %s: %w", o.argv[0], sess.ID, err)
	}

	// Signals go to the command; agentfence itself stays to clean up.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()

	werr := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	default:
		return werr
	}
	// The session lasts as long as anything the command started.
	if err := cgroupv2.WaitEmpty(sess.Cgroup, -1); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "agentfence: wait for session %s to empty: %v\n", sess.ID, err)
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
