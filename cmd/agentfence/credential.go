package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/credential"
)

const credentialUsage = `usage: agentfence credential fingerprint [--state-dir DIR] < SECRET
  print the fingerprint records give SECRET on this node (HMAC-SHA256 under
  the node key in DIR, created there if the daemon has not yet)`

// credentialCmd reads the secret from stdin, never from the command line,
// where it would land in the process's own argv.
func credentialCmd(_ context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "fingerprint" {
		return usageError{credentialUsage}
	}
	fs := flag.NewFlagSet("agentfence credential fingerprint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("state-dir", config.DefaultStateDir, "the daemon's state_dir, which holds the node key")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() != 0 {
		return usageError{credentialUsage}
	}
	b, err := io.ReadAll(io.LimitReader(stdin, 1<<16))
	if err != nil {
		return err
	}
	secret := string(bytes.TrimRight(b, "\r\n"))
	if secret == "" {
		return usageError{"no secret on standard input"}
	}
	key, err := credential.LoadOrCreateKey(*dir)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, key.Fingerprint(secret))
	return nil
}
