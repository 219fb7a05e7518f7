package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/internal/privdrop"
)

func TestRunKeepCap(t *testing.T) {
	o, err := parseRun([]string{"--intent", "x", "--keep-cap", "sys_ptrace", "--keep-cap", "CAP_NET_RAW", "--keep-cap", "Net_Raw", "--", "true"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []privdrop.Cap{privdrop.NetRaw, privdrop.SysPtrace}; !slices.Equal(o.keep, want) {
		t.Errorf("keep = %v, want %v", o.keep, want)
	}
	// The open request names them canonically, in the gate set's order.
	if want := []string{"CAP_NET_RAW", "CAP_SYS_PTRACE"}; !slices.Equal(o.sess.req.KeptCaps, want) {
		t.Errorf("kept_caps = %q, want %q", o.sess.req.KeptCaps, want)
	}
	if d := privdrop.Drops(o.keep); slices.Contains(d, privdrop.NetRaw) || !slices.Contains(d, privdrop.SysAdmin) {
		t.Errorf("drops = %v", d)
	}

	o, err = parseRun([]string{"--intent", "x", "--", "true"}, io.Discard)
	if err != nil || o.keep != nil || o.sess.req.KeptCaps != nil {
		t.Errorf("no --keep-cap: keep %v, kept_caps %q, %v", o.keep, o.sess.req.KeptCaps, err)
	}
}

// A bad --keep-cap is bad usage (exit 2), named in the message, found
// before anything is opened: the socket here does not exist.
func TestRunKeepCapBadInput(t *testing.T) {
	for _, c := range []struct{ value, msg string }{
		{"bogus", `"bogus"`},
		{"", `""`},
		{"net-raw", `"net-raw"`},
		{"chown", "does not drop CAP_CHOWN"},
	} {
		err := run(context.Background(), []string{"run", "--socket", "/nonexistent/api.sock", "--intent", "x", "--keep-cap", c.value, "--", "true"}, io.Discard, io.Discard)
		if err == nil || usageOrFailure(err) != 2 || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "--keep-cap") {
			t.Errorf("--keep-cap %q: %v (exit %d); want exit 2 naming %s", c.value, err, usageOrFailure(err), c.msg)
		}
	}
}

// An unknown --dns mode is bad usage (exit 2), named in the message, for
// run and session open alike, before anything is opened.
func TestDNSModeBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--socket", "/nonexistent/api.sock", "--intent", "x", "--dns", "some", "--", "true"},
		{"session", "open", "--socket", "/nonexistent/api.sock", "--intent", "x", "--dns", "some"},
		{"run", "--socket", "/nonexistent/api.sock", "--intent", "x", "--dns", "ANY", "--", "true"},
	} {
		mode := args[slices.Index(args, "--dns")+1]
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || usageOrFailure(err) != 2 || !strings.Contains(err.Error(), "--dns") ||
			!strings.Contains(err.Error(), `"`+mode+`"`) {
			t.Errorf("%q: %v (exit %d); want exit 2 naming the mode", args, err, usageOrFailure(err))
		}
	}
	o, err := parseRun([]string{"--intent", "x", "--dns", "none", "--", "true"}, io.Discard)
	if err != nil || o.sess.req.DNS != "none" {
		t.Errorf("--dns none: request dns %q, %v", o.sess.req.DNS, err)
	}
}

// A bad --credentials is refused before the daemon is asked, naming the
// flag and the value.
func TestRunCredentialsMode(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--socket", "/nonexistent/api.sock", "--intent", "x", "--credentials", "registered", "--", "true"},
		{"session", "open", "--socket", "/nonexistent/api.sock", "--intent", "x", "--credentials", "none"},
	} {
		mode := args[slices.Index(args, "--credentials")+1]
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || usageOrFailure(err) != 2 || !strings.Contains(err.Error(), "--credentials") ||
			!strings.Contains(err.Error(), `"`+mode+`"`) {
			t.Errorf("%q: %v (exit %d); want exit 2 naming the mode", args, err, usageOrFailure(err))
		}
	}
	o, err := parseRun([]string{"--intent", "x", "--credentials", "registered-only", "--", "true"}, io.Discard)
	if err != nil || o.sess.req.Credentials != "registered-only" {
		t.Errorf("--credentials registered-only: request %q, %v", o.sess.req.Credentials, err)
	}
}
