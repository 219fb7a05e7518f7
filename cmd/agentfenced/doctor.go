package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/agentfence/agentfence/config"
	hostcheck "github.com/agentfence/agentfence/doctor"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/kube/node"
)

// doctor checks what this host offers and fails when the gate itself
// cannot run. It lives in the daemon, which carries the BPF objects it
// loads; `agentfence doctor` runs it.
func doctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agentfenced doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "agentfenced's config file; its DNS TTL clamps are constants in the hostname programs, so they are verified with them (default: built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg := config.Default()
	if *path != "" {
		var err error
		if cfg, err = config.Load(*path); err != nil {
			return err
		}
	}
	rep, err := hostcheck.Run(ctx, nil, hostcheck.Options{Objects: enforcer.VerifyOptions{
		Hostnames: enforcer.HostnameOptions{TTLMin: cfg.DNS.MinTTL.Std(), TTLMax: cfg.DNS.MaxTTL.Std()}}})
	if err != nil {
		return err
	}
	if k := cfg.Kubernetes; k.Enabled {
		// As the daemon would: its kubeconfig or its pod's token.
		if rc, name, err := kubeClient(k); err != nil {
			rep.Checks = append(rep.Checks, hostcheck.Check{Name: node.CheckAPIServer, Status: hostcheck.StatusMissing, Detail: err.Error()})
		} else {
			rep.Checks = append(rep.Checks, node.Doctor(ctx, rc, name, k.HoldControlPlane)...)
		}
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if !rep.GateCanRun() {
		return errors.New("the egress gate cannot run on this host (see the checks marked missing above)")
	}
	return nil
}
