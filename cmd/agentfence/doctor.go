package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/doctor"
	"github.com/agentfence/agentfence/enforcer"
)

// doctorCmd checks what this host offers and exits non-zero when the gate
// itself cannot run.
func doctorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agentfence doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "agentfenced's config file; its DNS TTL clamps are constants in the hostname programs, so they are verified with them (default: built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	cfg := config.Default()
	if *path != "" {
		var err error
		if cfg, err = config.Load(*path); err != nil {
			return err
		}
	}
	rep, err := doctor.Run(ctx, stdout, doctor.Options{Objects: enforcer.VerifyOptions{
		Hostnames: enforcer.HostnameOptions{TTLMin: cfg.DNS.MinTTL.Std(), TTLMax: cfg.DNS.MaxTTL.Std()}}})
	if err != nil {
		return err
	}
	if !rep.GateCanRun() {
		return errors.New("the egress gate cannot run on this host (see the checks marked missing above)")
	}
	return nil
}
