package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func auditCmd(args []string, stdout, stderr io.Writer) error {
	const auditUsage = "usage: agentfence audit show [--kind K,...] FILE"
	if len(args) == 0 {
		return usageError{auditUsage}
	}
	switch args[0] {
	case "show":
		fs := flag.NewFlagSet("agentfence audit show", flag.ContinueOnError)
		fs.SetOutput(stderr)
		kinds := fs.String("kind", "connect,sendmsg,socket", "record kinds to show (comma-separated; empty for all)")
		if err := fs.Parse(args[1:]); err != nil {
			return usageError{err.Error()}
		}
		if fs.NArg() != 1 {
			return usageError{auditUsage}
		}
		return showRecords(fs.Arg(0), *kinds, stdout)
	default:
		return usageError{auditUsage}
	}
}

// showRecords pretty-prints the records of the given kinds from a JSON-lines
// audit file.
func showRecords(path, kinds string, w io.Writer) error {
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
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if len(want) > 0 && !want[head.Kind] {
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
