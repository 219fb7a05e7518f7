package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// A member that speaks TLS through GnuTLS (Debian's wget) is named by a
// tls_uncovered record, and `session show` lists its executable while the
// session lasts: its calls have no http records, only connect records.
func TestSessionShowsUncoveredTLS(t *testing.T) {
	wget, err := exec.LookPath("wget")
	if err != nil {
		t.Skip("wget is not installed")
	}
	if out, err := exec.Command("ldd", wget).Output(); err != nil || !strings.Contains(string(out), "libgnutls.") {
		t.Skipf("%s is not linked to GnuTLS", wget)
	}
	d := startDaemon(t)
	addr, ca, received := httpsServer(t)
	s := d.openSession(t, "--intent", "gnutls-client", "--allow", "tcp://"+addr.String())
	dir, err := os.Open(s.Binding.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(wget, "-q", "-O", "/dev/null", "--ca-certificate="+ca, "--post-data=x=1", fmt.Sprintf("https://%s/v1/wget", addr))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("wget in the session: %v\n%s", err, out)
	}
	if n := len(received()); n != 1 {
		t.Fatalf("the server received %d requests, want 1", n)
	}
	rec := d.waitRecord(t, "wget's tls_uncovered", func(r audit.Record) bool {
		return r.Kind == audit.KindTLSUncovered && r.Session != nil && r.Session.ID == s.ID
	})
	if rec.TLS == nil || rec.TLS.Library != tlsprobe.StackGnuTLS || rec.Process == nil || rec.Process.Exe != wget {
		t.Errorf("tls_uncovered record: process %+v, tls %+v", rec.Process, rec.TLS)
	}
	// The registry takes the record before the trail does.
	out, stderr, code := d.cli(t, nil, "session", "show", "--socket", d.socket, s.ID)
	if code != 0 {
		t.Fatalf("session show: exit %d: %s", code, stderr)
	}
	var shown v1.Session
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown.TLSUncovered) != 1 || shown.TLSUncovered[0].Exe != wget || shown.TLSUncovered[0].Library != tlsprobe.StackGnuTLS ||
		shown.TLSUncovered[0].Reason != rec.TLS.Uncovered {
		t.Errorf("session show lists %+v, want %s (%s)", shown.TLSUncovered, wget, rec.TLS.Uncovered)
	}
	for _, r := range d.records(t) {
		if r.Kind == audit.KindHTTP && r.Session != nil && r.Session.ID == s.ID {
			t.Errorf("an http record of a GnuTLS client: %+v (route 33 is closed for GnuTLS: update docs)", r.HTTP)
		}
	}
}
