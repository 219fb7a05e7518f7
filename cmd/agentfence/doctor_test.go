package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// `agentfence doctor` is `agentfenced doctor`: arguments and output pass
// through, and the daemon's exit status is the CLI's.
func TestDoctorRunsTheDaemon(t *testing.T) {
	dir := t.TempDir()
	fake := "#!/bin/sh\necho \"checked $*\"\necho 'gate: missing' >&2\nexit 3\n"
	if err := os.WriteFile(filepath.Join(dir, "agentfenced"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"doctor", "--config", "/etc/agentfence.json"}, &stdout, &stderr)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 3 {
		t.Fatalf("err = %v, want exit status 3", err)
	}
	if stdout.String() != "checked doctor --config /etc/agentfence.json\n" || stderr.String() != "gate: missing\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestDoctorWithoutTheDaemon(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := run(context.Background(), []string{"doctor"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("agentfenced is neither next to")) {
		t.Fatalf("err = %v, want one that says agentfenced was not found", err)
	}
}
