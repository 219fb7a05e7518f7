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

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/credential"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/privdrop"
	"github.com/agentfence/agentfence/scope"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// sessionFlags are the flags that describe a new session, shared by
// `run` and `session open`.
type sessionFlags struct {
	req                        v1.OpenRequest
	allow, labels              listFlag
	mcp, mcpAllow              listFlag
	origin, agentID, agentName string
	agentVersion, agentOwner   string
	ttl                        time.Duration
}

func (f *sessionFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.req.Intent, "intent", "", "why this session exists (required)")
	fs.Var(&f.allow, "allow", "scope rule (repeatable): [essential,][exe=PATH,][tcp://|udp://]ADDR[/PREFIX][:PORT[-PORT]]")
	fs.StringVar((*string)(&f.req.Mode), "mode", string(v1.ModeEnforce), "enforce (deny with EPERM) or audit (allow, record would_deny)")
	fs.StringVar(&f.req.DNS, "dns", "", "what members may ask a resolver: scoped (default: names the hostname rules cover), none, or any")
	fs.StringVar(&f.req.Credentials, "credentials", "", "what credentials members may send: any (default) or registered-only (a credential no registered holder owns is flagged)")
	fs.DurationVar(&f.ttl, "ttl", 0, "session lifetime (default: the daemon's)")
	fs.StringVar(&f.origin, "origin", "", "what triggered the session: human:PRINCIPAL, schedule:NAME or agent:SESSION")
	fs.StringVar(&f.agentID, "agent", "", "the agent's SPIFFE ID")
	fs.StringVar(&f.agentName, "agent-name", "", "the agent's name")
	fs.StringVar(&f.agentVersion, "agent-version", "", "the agent's version")
	fs.StringVar(&f.agentOwner, "agent-owner", "", "who owns the agent")
	fs.StringVar(&f.req.Parent, "parent", "", "parent session (delegation); a session member always opens children of its own")
	fs.Var(&f.labels, "label", "KEY=VALUE label (repeatable)")
	fs.Var(&f.mcp, "mcp", "NAME=COMMAND: an MCP server members may launch, as its command line will be executed,\n"+
		"e.g. 'tickets=node /srv/mcp/tickets/server.mjs' (repeatable; docs/mcp.md)")
	fs.Var(&f.mcpAllow, "mcp-allow", "NAME=RULE: a scope rule of a declared MCP server (repeatable)")
}

// check validates locally what can be checked, so a mistake is reported
// even when the daemon is not running; the daemon checks again.
func (f *sessionFlags) check() error {
	r := &f.req
	switch {
	case strings.TrimSpace(r.Intent) == "":
		return usageError{"--intent is required: say why this session exists"}
	case r.Mode != v1.ModeEnforce && r.Mode != v1.ModeAudit:
		return usageError{fmt.Sprintf("--mode %q: want enforce or audit", r.Mode)}
	case f.ttl < 0:
		return usageError{fmt.Sprintf("--ttl %s must be positive", f.ttl)}
	}
	if _, err := scope.ParseDNSMode(r.DNS); err != nil {
		return usageError{"--dns: " + err.Error()}
	}
	if _, err := credential.ParseMode(r.Credentials); err != nil {
		return usageError{"--credentials: " + err.Error()}
	}
	if f.ttl > 0 {
		r.TTL = f.ttl.String()
	}
	r.Scope = f.allow
	for _, a := range f.allow {
		if _, err := scope.Parse(a); err != nil {
			return usageError{"--allow: " + err.Error()}
		}
	}
	if f.origin != "" {
		kind, principal, ok := strings.Cut(f.origin, ":")
		if !ok || principal == "" {
			return usageError{fmt.Sprintf("--origin %q: want KIND:PRINCIPAL, e.g. human:alice@example.com", f.origin)}
		}
		r.Origin = &v1.Origin{Kind: v1.OriginKind(kind), Principal: principal}
	}
	if f.agentID+f.agentName+f.agentVersion+f.agentOwner != "" {
		r.Agent = &v1.Agent{ID: f.agentID, Name: f.agentName, Version: f.agentVersion, Owner: f.agentOwner}
	}
	if err := f.checkMCP(); err != nil {
		return err
	}
	for _, l := range f.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usageError{fmt.Sprintf("--label %q: want KEY=VALUE", l)}
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[k] = v
	}
	return nil
}

type runOptions struct {
	socket string
	sess   sessionFlags
	keep   []privdrop.Cap // of privdrop.Gate, from --keep-cap
	argv   []string
}

func parseRun(args []string, stderr io.Writer) (runOptions, error) {
	var o runOptions
	fs := flag.NewFlagSet("agentfence run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: agentfence run [--socket PATH] --intent TEXT --allow RULE ... [--mode enforce|audit] [--dns scoped|none|any] [--credentials any|registered-only] [--ttl DURATION] [--origin KIND:PRINCIPAL] [--agent SPIFFE_ID] [--parent ID] [--keep-cap CAP ...] -- CMD [ARGS...]")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.socket, "socket", v1.DefaultSocket, "agentfenced API socket")
	o.sess.register(fs)
	var keep listFlag
	fs.Var(&keep, "keep-cap", "leave the command this capability, which run otherwise drops (repeatable): "+gateList())
	if err := fs.Parse(args); err != nil {
		return o, usageError{err.Error()}
	}
	o.argv = fs.Args()
	if err := o.sess.check(); err != nil {
		return o, err
	}
	var caps []privdrop.Cap
	for _, name := range keep {
		c, err := privdrop.Parse(name)
		if err != nil {
			return o, usageError{"--keep-cap: " + err.Error()}
		}
		if !privdrop.InGate(c) {
			return o, usageError{fmt.Sprintf("--keep-cap %q: run does not drop %s; it drops %s", name, c, gateList())}
		}
		caps = append(caps, c)
	}
	o.keep = privdrop.Kept(caps)
	o.sess.req.KeptCaps = privdrop.Names(o.keep)
	if len(o.argv) == 0 {
		return o, usageError{"no command given after --"}
	}
	return o, nil
}

func gateList() string { return strings.Join(privdrop.Names(privdrop.Gate), ", ") }

// runCmd opens a session, starts the command directly inside the session's
// cgroup (clone3 CLONE_INTO_CGROUP, so not one instruction runs outside it)
// with no_new_privs and without the capabilities of privdrop.Gate it was
// not told to keep, waits for it and every descendant to finish, closes the
// session and exits with the command's status.
func runCmd(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseRun(args, stderr)
	if err != nil {
		return err
	}
	path, err := exec.LookPath(o.argv[0])
	if err != nil {
		return err
	}
	client := client.New(o.socket)
	sess, err := client.Open(ctx, o.sess.req)
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

	cg, err := os.Open(sess.Binding.Cgroup)
	if err != nil {
		return fmt.Errorf("open session cgroup: %w", err)
	}
	defer cg.Close()
	cmd := exec.Command(path, o.argv[1:]...)
	cmd.Args[0] = o.argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "AGENTFENCE_SESSION="+sess.ID)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := privdrop.Start(cmd, privdrop.Drops(o.keep)); err != nil {
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
	if err := cgroupv2.WaitEmpty(sess.Binding.Cgroup, -1); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "agentfence: wait for session %s to empty: %v\n", sess.ID, err)
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}
