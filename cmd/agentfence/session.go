package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentfence/agentfence/api"
)

func sessionCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const sessionUsage = "usage: agentfence session list|show ID|close ID [--socket PATH] [--json]"
	if len(args) == 0 {
		return usageError{sessionUsage}
	}
	fs := flag.NewFlagSet("agentfence session "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", api.DefaultSocket, "agentfenced API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	c := api.NewClient(*socket)
	needID := func() (string, error) {
		if fs.NArg() != 1 {
			return "", usageError{sessionUsage}
		}
		return fs.Arg(0), nil
	}
	switch args[0] {
	case "list":
		ss, err := c.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(ss)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tMODE\tEXPIRES\tINTENT\tALLOW")
		for _, s := range ss {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.State, s.Mode, s.ExpiresAt.Format(time.RFC3339), s.Intent, strings.Join(s.Allow, " "))
		}
		return tw.Flush()
	case "show":
		id, err := needID()
		if err != nil {
			return err
		}
		s, err := c.Get(ctx, id)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	case "close":
		id, err := needID()
		if err != nil {
			return err
		}
		return c.Close(ctx, id)
	default:
		return usageError{sessionUsage}
	}
}
