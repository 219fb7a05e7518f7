package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// doctorCmd runs `agentfenced doctor`: the checks load the daemon's BPF
// objects, which only the daemon carries, so that this CLI links no
// kernel code. The daemon next to this binary is preferred (an install puts
// both in one directory), then the one on PATH.
func doctorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	daemon, err := findDaemon()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, daemon, append([]string{"doctor"}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return exitError{ee.ExitCode()} // it said why
	}
	return err
}

func findDaemon() (string, error) {
	self, err := os.Executable()
	if err == nil {
		next := filepath.Join(filepath.Dir(self), "agentfenced")
		if _, err := os.Stat(next); err == nil {
			return next, nil
		}
	}
	if p, err := exec.LookPath("agentfenced"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("doctor runs `agentfenced doctor`, and agentfenced is neither next to %s nor on PATH", self)
}
