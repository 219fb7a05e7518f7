package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/agentfence/agentfence/doctor"
)

// doctorCmd checks what this host offers and exits non-zero when the gate
// itself cannot run.
func doctorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agentfence doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	rep, err := doctor.Run(ctx, stdout, doctor.Options{})
	if err != nil {
		return err
	}
	if !rep.GateCanRun() {
		return errors.New("the egress gate cannot run on this host (see the checks marked missing above)")
	}
	return nil
}
