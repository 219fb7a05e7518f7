// Command agentfence is the agentfence CLI: run a command in an intent
// session, manage sessions, check the host.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// exitError carries an exit status through run.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "agentfence:", err)
		os.Exit(usageOrFailure(err))
	}
}

const usage = `usage: agentfence COMMAND [ARGS]

commands:
  run       run a command inside a new intent session
  session   open, list, show, bind, narrow, revoke or close sessions
  audit     show, tail or verify audit records
  doctor    check what this host offers and what a missing feature disables
  credential fingerprint   print the fingerprint records give a secret read from stdin
  help      show this help
`

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// Exit codes: 2 for bad usage, 125 for agentfence's own failures (as env(1)
// and container runtimes do), so they never look like the command's status.
func usageOrFailure(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 125
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	switch args[0] {
	case "run":
		return runCmd(ctx, args[1:], stderr)
	case "session":
		return sessionCmd(ctx, args[1:], stdout, stderr)
	case "audit":
		return auditCmd(ctx, args[1:], stdout, stderr)
	case "doctor":
		return doctorCmd(ctx, args[1:], stdout, stderr)
	case "credential":
		return credentialCmd(ctx, args[1:], os.Stdin, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
}
