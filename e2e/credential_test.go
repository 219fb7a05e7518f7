package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/audit"
)

// A credential on an agent's command line never reaches the audit trail,
// the daemon's log, its metrics or its state: the agent's exec record
// carries its fingerprint instead, the one `agentfence credential
// fingerprint` prints on this node.
func TestCredentialsNeverRecorded(t *testing.T) {
	d := startDaemon(t)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	bearer := "sk-proj-CANARY" + hex.EncodeToString(nonce)
	env := "CANARYenv" + hex.EncodeToString(nonce)
	_, stderr, code := d.cli(t, nil, "run", "--intent", "canary", "--allow", "udp://127.0.0.53:53", "--",
		"/bin/sh", "-c", "/bin/true; /bin/true", "sh", "Authorization: Bearer "+bearer, "OPENAI_API_KEY="+env)
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	wantArgs := []string{"Authorization: Bearer redacted:" + d.fingerprint(t, bearer), "OPENAI_API_KEY=redacted:" + d.fingerprint(t, env)}
	agent := d.waitRecord(t, "the agent's exec", func(r audit.Record) bool {
		return r.Kind == audit.KindExec && r.Session != nil && r.Session.Intent == "canary" && len(r.Process.Argv) > 0 &&
			r.Process.Argv[0] == "/bin/sh"
	})
	if argv := agent.Process.Argv; len(argv) < 2 || !slices.Equal(argv[len(argv)-2:], wantArgs) {
		t.Errorf("the agent's argv %q, want it to end in %q", argv, wantArgs)
	}
	d.waitRecord(t, "a child's exec", func(r audit.Record) bool {
		return r.Kind == audit.KindExec && r.Session != nil && r.Session.Intent == "canary" && filepath.Base(r.Process.Exe) == "true"
	})

	outputs := d.outputs(t)
	for name, b := range outputs {
		for _, secret := range []string{bearer, env} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s contains the planted credential %q", name, secret)
			}
		}
	}
}

// outputs is everything the daemon wrote, as it wrote it: its log, its
// metrics, its audit files and its state.
func (d *daemon) outputs(t *testing.T) map[string][]byte {
	t.Helper()
	stateDir := d.args[slices.Index(d.args, "--state-dir")+1]
	outputs := map[string][]byte{"daemon log": []byte(d.log())}
	resp, err := http.Get(d.metricsBase(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	outputs["metrics"], _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, dir := range []string{filepath.Dir(d.audit), stateDir} {
		filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				b, _ := os.ReadFile(path)
				outputs[path] = b
			}
			return nil
		})
	}
	if len(outputs[d.audit]) == 0 {
		t.Fatalf("no audit file among %d outputs", len(outputs))
	}
	return outputs
}

// fingerprint is what `agentfence credential fingerprint` says of secret
// on the daemon's node.
func (d *daemon) fingerprint(t *testing.T, secret string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(d.bin, "agentfence"), "credential", "fingerprint", "--state-dir",
		d.args[slices.Index(d.args, "--state-dir")+1])
	cmd.Stdin = strings.NewReader(secret + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
