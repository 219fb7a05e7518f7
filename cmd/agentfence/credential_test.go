package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/credential"
)

// The fingerprint the CLI prints is the one records carry on this node
// (the node key in the state dir), with the trailing newline of a piped
// secret dropped; bad usage is exit 2.
func TestCredentialFingerprint(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if err := credentialCmd(context.Background(), []string{"fingerprint", "--state-dir", dir}, strings.NewReader("sk-abc\n"), &out, &errb); err != nil {
		t.Fatal(err)
	}
	key, err := credential.LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(out.String()), key.Fingerprint("sk-abc"); got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
	for _, c := range []struct {
		args  []string
		stdin string
	}{
		{nil, "x"}, {[]string{"print"}, "x"}, {[]string{"fingerprint", "sk-on-the-command-line"}, "x"},
		{[]string{"fingerprint", "--state-dir", dir}, "\n"}, {[]string{"fingerprint", "--bogus"}, "x"},
	} {
		err := credentialCmd(context.Background(), c.args, strings.NewReader(c.stdin), &out, &errb)
		if usageOrFailure(err) != 2 {
			t.Errorf("%q with %q: %v, want a usage error", c.args, c.stdin, err)
		}
	}
}
