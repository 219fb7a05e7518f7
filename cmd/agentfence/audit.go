package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

const auditUsage = `usage: agentfence audit COMMAND FILE
  show   [--kind K,...] [--proto P] FILE   print records in full (default kinds: connect, sendmsg, socket)
  tail   [-f] FILE             print records one per line; -f follows the file
  verify FILE                  check seq and the hash chain; report the first gap, reorder or alteration`

func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{auditUsage}
	}
	fs := flag.NewFlagSet("agentfence audit "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	kinds := fs.String("kind", "connect,sendmsg,socket", "record kinds to show (comma-separated; empty for all)")
	follow := fs.Bool("f", false, "follow the file")
	proto := fs.String("proto", "", "show: only records whose destination.protocol is this (tcp, udp)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() != 1 {
		return usageError{auditUsage}
	}
	path := fs.Arg(0)
	switch args[0] {
	case "show":
		return showRecords(path, *kinds, *proto, stdout)
	case "tail":
		return audit.Tail(ctx, path, stdout, *follow)
	case "verify":
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		rep, err := audit.Verify(f)
		if err != nil {
			return err
		}
		if !rep.OK() {
			return fmt.Errorf("%s: %v", path, rep.Problem)
		}
		fmt.Fprintf(stdout, "%s: ok: %d records, seq %d..%d, %d duplicates, %d explained gaps; %d decisions, %d aggregate records\n",
			path, rep.Records, rep.FirstSeq, rep.LastSeq, rep.Duplicates, len(rep.Gaps), rep.Decisions, rep.Aggregates)
		return nil
	default:
		return usageError{auditUsage}
	}
}

// showRecords pretty-prints the records of the given kinds from a JSON-lines
// audit file.
func showRecords(path, kinds, proto string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	want := map[string]bool{}
	for _, k := range strings.Split(kinds, ",") {
		if k != "" {
			want[k] = true
		}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		var head struct {
			Kind        string `json:"kind"`
			Destination struct {
				Protocol string `json:"protocol"`
			} `json:"destination"`
		}
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if (len(want) > 0 && !want[head.Kind]) || (proto != "" && head.Destination.Protocol != proto) {
			continue
		}
		var out bytes.Buffer
		if err := json.Indent(&out, sc.Bytes(), "", "  "); err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
		out.WriteByte('\n')
		if _, err := w.Write(out.Bytes()); err != nil {
			return err
		}
	}
	return sc.Err()
}
