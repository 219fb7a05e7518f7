package e2e

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

const goClientSrc = `package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 3 {
		d, _ := time.ParseDuration(os.Args[3])
		time.Sleep(d)
	}
	pem, _ := os.ReadFile(os.Args[2])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	// H2 in the environment: HTTP/2, which a custom TLS config otherwise
	// turns off.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: os.Getenv("H2") != ""}}
	resp, err := c.Post(os.Args[1], "text/plain", strings.NewReader("x=1"))
	if err != nil {
		panic(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
`

// buildGoClients builds goClientSrc normally and with -s -w, without cgo,
// into dir.
func buildGoClients(t *testing.T, dir string) map[string]string {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no Go toolchain to build the client")
	}
	if privtest.Emulated() {
		t.Skip("building a Go client from a cold cache under emulation takes minutes; the kernel parts are TestHTTPCallsAttributed's and sensor/tlsprobe's")
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module client\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(goClientSrc), 0o644)
	out := map[string]string{}
	for name, flags := range map[string][]string{"goclient": nil, "goclient-stripped": {"-ldflags=-s -w"}} {
		bin := filepath.Join(dir, name)
		cmd := exec.Command(gotool, append(append([]string{"build", "-o", bin}, flags...), ".")...)
		cmd.Dir, cmd.Env = src, append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
		out[name] = bin
	}
	return out
}

// A member's Go client (crypto/tls), built normally and with -s -w, over
// HTTP/1.1 and HTTP/2, has its HTTPS calls recorded as http records, tls.library go, matching what
// the server received, with the socket's peer as destination.
//
// The probes are placed when the daemon sees the member's exec, which a
// one-request client outruns: its first run may be missed, and then a
// tls_uncovered record says so. From then on the file is
// probed, so the second run, and any later one, is read from its start;
// a long-lived agent is read from its first call after the attach.
func TestHTTPGoClients(t *testing.T) {
	d := startDaemon(t)
	addr, ca, received := httpsServer(t)
	built := buildGoClients(t, filepath.Dir(ca)) // readable by the agent
	// The HTTP/2 client is a copy: another file, probed at its own exec.
	b, err := os.ReadFile(built["goclient-stripped"])
	if err != nil {
		t.Fatal(err)
	}
	h2 := filepath.Join(filepath.Dir(ca), "goclient-h2")
	if err := os.WriteFile(h2, b, 0o755); err != nil {
		t.Fatal(err)
	}
	clients := []struct {
		name, bin, version string
		env                []string
	}{
		{"goclient", built["goclient"], "1.1", nil},
		{"goclient-stripped", built["goclient-stripped"], "1.1", nil},
		{"goclient-h2", h2, "2", []string{"H2=1"}},
	}
	url := fmt.Sprintf("https://%s/v1/go", addr)
	for _, c := range clients {
		name, bin := c.name, c.bin
		t.Run(name, func(t *testing.T) {
			for run := 1; run <= 2; run++ {
				intent := fmt.Sprintf("%s-run%d", name, run)
				before := len(received())
				start := time.Now()
				if _, stderr, code := d.cli(t, c.env, "run", "--intent", intent, "--allow", "tcp://"+addr.String(), "--", bin, url, ca); code != 0 {
					t.Fatalf("run %s: exit %d: %s", name, code, stderr)
				}
				took := time.Since(start)
				got := received()[before:]
				if len(got) != 1 {
					t.Fatalf("the server received %d requests, want 1", len(got))
				}
				match := func(r audit.Record) bool {
					return r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == intent
				}
				if run == 1 {
					// The exec's attach is what the next run needs: wait
					// for the daemon to have done it.
					waitFor(t, "the probes on "+name, func() bool {
						for _, line := range strings.Split(d.log(), "\n") {
							if strings.Contains(line, "tls probes attached") && (strings.Contains(line, "file="+bin+" ") || strings.Contains(line, `"file":"`+bin+`"`)) {
								return true
							}
						}
						return false
					})
					// Read or not, never silently: an http record, or a
					// tls_uncovered record saying the probes came late.
					rec := d.waitRecord(t, name+"'s first run", func(r audit.Record) bool {
						return match(r) || r.Kind == audit.KindTLSUncovered && r.Session != nil && r.Session.Intent == intent
					})
					if rec.Kind == audit.KindTLSUncovered && (rec.TLS == nil || rec.TLS.Library != tlsprobe.StackGo || !strings.Contains(rec.TLS.Uncovered, "before the probes were placed")) {
						t.Errorf("first run's tls_uncovered: %+v", rec.TLS)
					}
					t.Logf("first run (%v): %s record", took, rec.Kind)
					continue
				}
				rec := d.waitRecord(t, name+"'s http", match)
				h := rec.HTTP
				if h.Method != got[0].method || h.Host != got[0].host || h.Path != got[0].path || h.Status != http.StatusCreated ||
					h.Version != c.version || h.Partial || h.RequestBytes != 3 || h.ResponseBytes != int64(len("ticket 42\n")) {
					t.Errorf("http %+v, the server saw %+v and answered 201 with 10 bytes", *h, got[0])
				}
				if rec.TLS == nil || rec.TLS.Library != "go" || !rec.TLS.Socket {
					t.Errorf("tls %+v, want go with a socket", rec.TLS)
				}
				if dst := rec.Destination; dst == nil || dst.IP != addr.Addr().String() || dst.Port != addr.Port() {
					t.Errorf("destination %+v, want %v", dst, addr)
				}
				if rec.Process == nil || rec.Process.Exe != bin {
					t.Errorf("process %+v, want %s", rec.Process, bin)
				}
				d.recordOf(t, name+"'s connect", audit.KindConnect, rec.Process.PID, func(r audit.Record) bool {
					return r.Destination.IP == rec.Destination.IP && r.Destination.Port == rec.Destination.Port
				})
			}
		})
	}
	for _, r := range d.records(t) {
		if r.Kind == audit.KindTLSUncovered && r.TLS != nil && r.TLS.Library == tlsprobe.StackGo &&
			(r.Session == nil || !strings.HasSuffix(r.Session.Intent, "-run1")) {
			t.Errorf("tls_uncovered for a probed Go client's later run: %+v", r.TLS)
		}
	}
}

// Route 33 (docs/threat-model.md), what stays open: a Go client of a
// version the probes have no offsets for (here the stripped client,
// claiming Go 1.99) is named by a tls_uncovered record that says why; its
// calls have no http record, and its connect is recorded.
func TestHTTPUncoveredGo(t *testing.T) {
	d := startDaemon(t)
	addr, ca, received := httpsServer(t)
	dir := filepath.Dir(ca)
	clients := buildGoClients(t, dir)
	bi, err := buildinfo.ReadFile(clients["goclient-stripped"])
	if err != nil {
		t.Fatal(err)
	}
	future := "go1.99" + bi.GoVersion[len("go1.NN"):]
	b, err := os.ReadFile(clients["goclient-stripped"])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte("\xff Go buildinf:"))
	i := bytes.Index(b[at:], []byte(bi.GoVersion))
	if at < 0 || i < 0 || len(future) != len(bi.GoVersion) {
		t.Fatal("no build info to rewrite")
	}
	copy(b[at+i:], future)
	bin := filepath.Join(dir, "goclient-future")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/v1/go", addr)
	for run := 0; run < 2; run++ {
		if _, stderr, code := d.cli(t, nil, "run", "--intent", "go-future", "--allow", "tcp://"+addr.String(), "--", bin, url, ca); code != 0 {
			t.Fatalf("run: exit %d: %s", code, stderr)
		}
	}
	if n := len(received()); n != 2 {
		t.Fatalf("the server received %d requests, want 2", n)
	}
	rec := d.waitRecord(t, "the client's tls_uncovered", func(r audit.Record) bool {
		return r.Kind == audit.KindTLSUncovered && r.Process != nil && r.Process.Exe == bin
	})
	if rec.TLS == nil || rec.TLS.Library != tlsprobe.StackGo || !strings.Contains(rec.TLS.Uncovered, "1.99") ||
		!strings.Contains(rec.TLS.Uncovered, "no offsets") || rec.Session == nil || rec.Session.Intent != "go-future" {
		t.Errorf("%+v, tls %+v", rec.Session, rec.TLS)
	}
	d.recordOf(t, "the client's connect", audit.KindConnect, rec.Process.PID, nil)
	for _, r := range d.records(t) {
		if r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "go-future" {
			t.Errorf("an http record of a Go client without offsets: %+v (update docs/threat-model.md)", r.HTTP)
		}
	}
}

// A long-lived Go agent is read on its first run: its first call comes
// after the daemon placed the probes at its exec (here a fresh copy of
// the client, never seen before, that waits 2 s before its request).
func TestHTTPGoAgentFirstRun(t *testing.T) {
	d := startDaemon(t)
	addr, ca, received := httpsServer(t)
	dir := filepath.Dir(ca)
	clients := buildGoClients(t, dir)
	b, err := os.ReadFile(clients["goclient-stripped"])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "goagent")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/v1/agent", addr)
	if _, stderr, code := d.cli(t, nil, "run", "--intent", "go-agent", "--allow", "tcp://"+addr.String(), "--", bin, url, ca, "2s"); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	got := received()
	if len(got) != 1 {
		t.Fatalf("the server received %d requests, want 1", len(got))
	}
	rec := d.waitRecord(t, "the agent's http", func(r audit.Record) bool {
		return r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "go-agent"
	})
	if h := rec.HTTP; h.Method != got[0].method || h.Path != got[0].path || h.Status != http.StatusCreated || h.Partial ||
		rec.TLS == nil || rec.TLS.Library != "go" || !rec.TLS.Socket {
		t.Errorf("http %+v, tls %+v; the server saw %+v", *h, rec.TLS, got[0])
	}
}
