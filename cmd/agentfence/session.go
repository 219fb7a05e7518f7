package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"

	"github.com/agentfence/agentfence/scope"
)

const sessionUsage = `usage: agentfence session COMMAND [--socket PATH] ...
  open   --intent TEXT --allow RULE ... [run's session flags]   open a session, print it
  list   [--state S] [--origin KIND] [--agent ID|NAME] [--parent ID] [--label K=V] [--json]
  show   ID
  bind   ID (--pid PID | --container ID | --pod UID)
  narrow ID --allow RULE ...                                      replace the scope with a narrower one
  revoke ID                                                       deny everything at once, destroy connections
  close  ID                                                       end the session, kill its members`

func sessionCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{sessionUsage}
	}
	verb := args[0]
	fs := flag.NewFlagSet("agentfence session "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", v1.DefaultSocket, "agentfenced API socket")
	var sf sessionFlags
	var allow listFlag
	var pid uint
	var container, pod, state, origin, agent, parent, label string
	var asJSON bool
	switch verb {
	case "open":
		sf.register(fs)
	case "list":
		fs.StringVar(&state, "state", "", "only sessions in this state")
		fs.StringVar(&origin, "origin", "", "only sessions with this origin kind")
		fs.StringVar(&agent, "agent", "", "only sessions of this agent (id or name)")
		fs.StringVar(&parent, "parent", "", "only children of this session")
		fs.StringVar(&label, "label", "", "only sessions with this KEY=VALUE label")
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	case "bind":
		fs.UintVar(&pid, "pid", 0, "process to bind (it and what it forks afterwards)")
		fs.StringVar(&container, "container", "", "container id whose cgroup to bind")
		fs.StringVar(&pod, "pod", "", "Kubernetes pod UID whose cgroup to bind (all its containers)")
	case "narrow":
		fs.Var(&allow, "allow", "rule of the new, narrower scope (repeatable)")
	case "show", "revoke", "close":
	default:
		return usageError{sessionUsage}
	}
	// Flags may come before or after the session id.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	wantID := verb != "open" && verb != "list"
	if (wantID && len(pos) != 1) || (!wantID && len(pos) != 0) {
		return usageError{sessionUsage}
	}
	c := client.New(*socket)
	var s v1.Session
	var err error
	switch verb {
	case "open":
		if err := sf.check(); err != nil {
			return err
		}
		s, err = c.Open(ctx, sf.req)
	case "list":
		q := url.Values{}
		for k, v := range map[string]string{"state": state, "origin": origin, "agent": agent, "parent": parent, "label": label} {
			if v != "" {
				q.Set(k, v)
			}
		}
		ss, err := c.List(ctx, q)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(stdout).Encode(ss)
		}
		return printSessions(stdout, ss)
	case "show":
		s, err = c.Get(ctx, pos[0])
	case "bind":
		if n := btoi(pid != 0) + btoi(container != "") + btoi(pod != ""); n != 1 {
			return usageError{"bind: give exactly one of --pid, --container and --pod"}
		}
		s, err = c.Bind(ctx, pos[0], v1.BindRequest{PID: uint32(pid), ContainerID: container, PodUID: pod})
	case "narrow":
		if len(allow) == 0 {
			return usageError{"narrow: give the new scope with --allow (a session with no rules: use revoke)"}
		}
		for _, a := range allow {
			if _, err := scope.Parse(a); err != nil {
				return usageError{"--allow: " + err.Error()}
			}
		}
		s, err = c.Narrow(ctx, pos[0], v1.NarrowRequest{Scope: allow})
	case "revoke":
		s, err = c.Revoke(ctx, pos[0])
	case "close":
		return c.Close(ctx, pos[0])
	}
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

func printSessions(w io.Writer, ss []v1.Session) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tMODE\tORIGIN\tEXPIRES\tINTENT\tSCOPE")
	for _, s := range ss {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%s\t%s\t%s\t%s\n", s.ID, s.State, s.Mode, s.Origin.Kind, s.Origin.Principal,
			s.ExpiresAt.Format(time.RFC3339), s.Intent, strings.Join(s.Scope, " "))
	}
	return tw.Flush()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
