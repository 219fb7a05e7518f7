package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// seen is what the test server received, the ground truth the records are
// checked against.
type seen struct {
	method, host, path, auth, apiKey string
}

// httpsServer serves HTTPS on loopback with a test CA (written to a file
// the agents can read) and logs each request.
func httpsServer(t testing.TB) (netip.AddrPort, string, func() []seen) {
	var mu sync.Mutex
	var log []seen
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		log = append(log, seen{r.Method, r.Host, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")})
		mu.Unlock()
		// Read to the end: an HTTP/2 stream whose body the handler left
		// unread is reset, which curl reports as an error.
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, "ticket 42")
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir, err := os.MkdirTemp("", "af-ca-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), ca, func() []seen {
		mu.Lock()
		defer mu.Unlock()
		return append([]seen(nil), log...)
	}
}

// An agent's HTTPS calls through OpenSSL (curl, openssl s_client, and Python's urllib, which
// loads libssl only when it imports ssl) are recorded as http records:
// method, host, path, status and the credential's fingerprint, attributed
// to the session and the process, with the socket's peer as destination;
// the same as the server received. The key appears nowhere.
func TestHTTPCallsAttributed(t *testing.T) {
	d := startDaemon(t)
	// A host with no session holds no probes, nor their ring.
	if n, err := tlsprobe.RingsHeld(d.cmd.Process.Pid); err != nil || n != 0 {
		t.Fatalf("the daemon holds %d TLS rings before any session (%v)", n, err)
	}
	addr, ca, received := httpsServer(t)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	bearer := "sk-CANARY" + hex.EncodeToString(nonce)
	apiKey := "CANARYkey" + hex.EncodeToString(nonce)
	url := fmt.Sprintf("https://%s/v1/tickets?token=%s", addr, apiKey)
	// node reads the key from a file: a bare argument cannot be told
	// from any other word, so argv would carry it.
	keyFile := filepath.Join(filepath.Dir(ca), "key")
	if err := os.WriteFile(keyFile, []byte(apiKey), 0o644); err != nil {
		t.Fatal(err)
	}

	node := `const https = require("https"), fs = require("fs");
const req = https.request(process.argv[1], {method: "POST", ca: fs.readFileSync(process.argv[2]), headers: {"x-api-key": fs.readFileSync(process.argv[3], "utf8")}},
  res => { res.resume(); res.on("end", () => process.exit(0)); });
req.end("x=1");`
	clients := []struct {
		name    string
		argv    []string
		cred    string // the credential's value
		typ     string // and type
		version string
		calls   int
		library string
		socket  bool
	}{
		{name: "curl", argv: []string{"curl", "-sS", "--http1.1", "--cacert", ca, "-H", "Authorization: Bearer " + bearer, "-d", "x=1", url},
			cred: bearer, typ: "bearer", version: "1.1", calls: 1, library: "openssl", socket: true},
		// Two requests on one connection.
		{name: "curl-http2", argv: []string{"curl", "-sS", "--http2", "--cacert", ca, "-H", "Authorization: Bearer " + bearer, "-d", "x=1", url, url},
			cred: bearer, typ: "bearer", version: "2", calls: 2, library: "openssl", socket: true},
		{name: "python3", argv: []string{"python3", "-c", fmt.Sprintf(`import ssl, urllib.request as u; u.urlopen(u.Request(%q, data=b"x=1", headers={"x-api-key": %q}), context=ssl.create_default_context(cafile=%q)).read()`, url, apiKey, ca)},
			cred: apiKey, typ: "api_key", version: "1.1", calls: 1, library: "openssl", socket: true},
		// node's own OpenSSL does its I/O through memory buffers: no socket.
		{name: "node", argv: []string{"node", "-e", node, url, ca, keyFile},
			cred: apiKey, typ: "api_key", version: "1.1", calls: 1, library: "openssl:node"},
		// A request typed into openssl s_client (the key read from its file,
		// not put on a command line); the server closes after answering.
		{name: "openssl-s_client", argv: []string{"sh", "-c", `command -v openssl >/dev/null || exit 77
printf 'POST /v1/tickets HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\nContent-Length: 3\r\nConnection: close\r\n\r\nx=1' "$1" "$(cat "$2")" |
openssl s_client -quiet -connect "$1" -CAfile "$3" >/dev/null`, "sh", addr.String(), keyFile, ca},
			cred: apiKey, typ: "api_key", version: "1.1", calls: 1, library: "openssl", socket: true},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.argv[0]); err != nil {
				t.Skipf("%s is not installed", c.argv[0])
			}
			before := len(received())
			intent := "tickets-" + c.name
			_, stderr, code := d.cli(t, nil, append([]string{"run", "--intent", intent, "--allow", "tcp://" + addr.String(), "--"}, c.argv...)...)
			if code == 77 {
				t.Skipf("%s: a program it needs is not installed", c.name)
			}
			if code != 0 {
				t.Fatalf("run: exit %d: %s", code, stderr)
			}
			got := received()[before:]
			if len(got) != c.calls {
				t.Fatalf("the server received %d requests, want %d: %+v", len(got), c.calls, got)
			}
			var recs []audit.Record
			waitFor(t, fmt.Sprintf("%d http records of %s", c.calls, c.name), func() bool {
				recs = recs[:0]
				for _, r := range d.records(t) {
					if r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == intent {
						recs = append(recs, r)
					}
				}
				return len(recs) >= c.calls
			})
			if len(recs) != c.calls {
				t.Fatalf("%d http records, want %d", len(recs), c.calls)
			}
			for i, rec := range recs {
				h := rec.HTTP
				if h.Method != got[i].method || h.Host != got[i].host || h.Path != got[i].path || h.Status != http.StatusCreated ||
					h.Version != c.version || h.Query != "" || h.Partial {
					t.Errorf("http %+v, the server saw %s %s %s and answered 201 over HTTP/%s", *h, got[i].method, got[i].host, got[i].path, c.version)
				}
				if h.RequestBytes != 3 || h.ResponseBytes != int64(len("ticket 42\n")) {
					t.Errorf("body sizes %d and %d, want 3 and %d", h.RequestBytes, h.ResponseBytes, len("ticket 42\n"))
				}
				if rec.TLS == nil || rec.TLS.Library != c.library || rec.TLS.Socket != c.socket {
					t.Errorf("tls %+v, want %s, socket %v", rec.TLS, c.library, c.socket)
				}
				if dst := rec.Destination; dst == nil || c.socket && (dst.IP != addr.Addr().String() || dst.Port != addr.Port()) ||
					dst.Hostname != addr.Addr().String() {
					t.Errorf("destination %+v, want %v", dst, addr)
				}
				if cr := rec.Credential; cr == nil || cr.Type != c.typ || cr.Fingerprint != d.fingerprint(t, c.cred) {
					t.Errorf("credential %+v, want %s with the fingerprint `agentfence credential fingerprint` gives", cr, c.typ)
				}
				if rec.Process == nil || rec.Process.Exe == "" || rec.Origin == nil {
					t.Errorf("process %+v, origin %+v", rec.Process, rec.Origin)
				}
			}
			rec := recs[0]
			if !c.socket {
				return
			}
			// The same process's connect to the same socket is on record.
			d.recordOf(t, c.name+"'s connect", audit.KindConnect, rec.Process.PID, func(r audit.Record) bool {
				return r.Destination.IP == rec.Destination.IP && r.Destination.Port == rec.Destination.Port
			})
		})
	}
	if n, err := tlsprobe.RingsHeld(d.cmd.Process.Pid); err != nil || n != 1 {
		t.Errorf("the daemon holds %d TLS rings after its sessions (%v), want 1 until a minute passes without one", n, err)
	}
	outputs := d.outputs(t)
	metrics := string(outputs["metrics"])
	for _, want := range []string{`agentfence_kernel_events_lost_total{source="tls"} 0`, "agentfence_tls_probed_files "} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(metrics, "agentfence_tls_probed_files 0\n") {
		t.Error("no file probed while a session ran")
	}
	for name, b := range outputs {
		for _, secret := range []string{bearer, apiKey} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s contains the planted credential %q", name, secret)
			}
		}
	}
}

// Route 34 (docs/threat-model.md), open: a copy of libssl that the probes
// do not know, loaded through LD_LIBRARY_PATH, keeps the call out of the
// http records. Its connect is recorded and judged as any other.
func TestHTTPCopiedLibssl(t *testing.T) {
	d := startDaemon(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	libs := tlsprobe.Libraries()
	if len(libs) == 0 {
		t.Skip("no libssl on this host")
	}
	addr, ca, received := httpsServer(t)
	dir := filepath.Dir(ca)
	lib, err := os.ReadFile(libs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(libs[0])), lib, 0o755); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/v1/copied", addr)
	_, stderr, code := d.cli(t, nil, "run", "--intent", "copied-libssl", "--allow", "tcp://"+addr.String(), "--",
		"/usr/bin/env", "LD_LIBRARY_PATH="+dir, curl, "-sS", "--http1.1", "--cacert", ca, url)
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	if got := received(); len(got) != 1 || got[0].path != "/v1/copied" {
		t.Fatalf("the server received %+v", got)
	}
	conn := d.waitRecord(t, "the copy's connect", func(r audit.Record) bool {
		return r.Kind == audit.KindConnect && r.Session != nil && r.Session.Intent == "copied-libssl" &&
			r.Destination.Port == addr.Port()
	})
	if conn.Outcome.Verdict != audit.VerdictAllowed {
		t.Errorf("connect %+v", conn.Outcome)
	}
	// The TLS ring is read in order: once a later call through the host's
	// libssl is on record, a record of the copy's call would be too.
	if _, stderr, code := d.cli(t, nil, "run", "--intent", "host-libssl", "--allow", "tcp://"+addr.String(), "--",
		curl, "-sS", "--http1.1", "--cacert", ca, url); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	d.waitRecord(t, "the host libssl's http", func(r audit.Record) bool {
		return r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "host-libssl"
	})
	for _, r := range d.records(t) {
		if r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "copied-libssl" {
			t.Errorf("the copied libssl was probed after all: %+v (route 34 is closed: update docs/threat-model.md)", r.HTTP)
		}
	}
}

// curlAndPython skips a test without curl and python3 (or root), and
// returns curl's path, symlinks resolved, as an executable is named.
func curlAndPython(t *testing.T) string {
	t.Helper()
	privtest.RequireRoot(t)
	for _, c := range []string{"curl", "python3"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not installed", c)
		}
	}
	curl, _ := exec.LookPath("curl")
	curl, err := filepath.EvalSymlinks(curl)
	if err != nil {
		t.Fatal(err)
	}
	return curl
}

// Item 4 of issue 16: a credential registered with its holder (here curl
// stands in for an MCP server) is allowed from the holder's executable and
// flagged credential_outside_holder from any other process of the same
// session (python). The key travels in a file, never on a command line.
func TestHTTPCredentialOutsideHolder(t *testing.T) {
	curl := curlAndPython(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	nonce := make([]byte, 12)
	rand.Read(nonce)
	key := "CANARYholder" + hex.EncodeToString(nonce)
	// The node key exists before the daemon: the CLI makes it.
	cmd := exec.Command(filepath.Join(build(t), "agentfence"), "credential", "fingerprint", "--state-dir", stateDir)
	cmd.Stdin = strings.NewReader(key + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	fp := strings.TrimSpace(string(out))
	cfg := filepath.Join(dir, "agentfence.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "credentials:\n  holders:\n    - name: tickets-api\n      fingerprint: %s\n      executables: [{path: %s}]\n", fp, curl), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--config", cfg, "--state-dir", stateDir)
	addr, ca, received := httpsServer(t)
	header := filepath.Join(filepath.Dir(ca), "header")
	if err := os.WriteFile(header, []byte("x-api-key: "+key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/v1/tickets", addr)
	script := fmt.Sprintf(`%s -sS --http1.1 --cacert %s -H @%s -d x=1 %s && python3 -c 'import ssl, urllib.request as u; u.urlopen(u.Request(%q, data=b"x=1", headers={"x-api-key": open(%q).read().split(": ")[1].strip()}), context=ssl.create_default_context(cafile=%q)).read()'`,
		curl, ca, header, url, url, header, ca)
	if _, stderr, code := d.cli(t, nil, "run", "--intent", "holders", "--allow", "tcp://"+addr.String(), "--", "/bin/sh", "-c", script); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	if n := len(received()); n != 2 {
		t.Fatalf("the server received %d requests, want 2", n)
	}
	byExe := map[string]audit.Record{}
	waitFor(t, "two http records", func() bool {
		for _, r := range d.records(t) {
			if r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "holders" {
				byExe[r.Process.Exe] = r
			}
		}
		return len(byExe) == 2
	})
	for exe, r := range byExe {
		if r.Credential == nil || r.Credential.Fingerprint != fp || r.Credential.Holder != "tickets-api" {
			t.Errorf("%s: credential %+v, want %s held by tickets-api", exe, r.Credential, fp)
		}
		if exe == curl {
			if r.Outcome.Verdict != audit.VerdictAllowed {
				t.Errorf("the holder's call: %+v", r.Outcome)
			}
		} else if r.Outcome.Verdict != audit.VerdictFlagged || r.Outcome.Reason != audit.ReasonCredentialOutsideHolder {
			t.Errorf("%s's call: %+v, want flagged %s", exe, r.Outcome, audit.ReasonCredentialOutsideHolder)
		}
	}
	if _, ok := byExe[curl]; !ok {
		t.Errorf("no record of the holder %s among %v", curl, slices.Collect(maps.Keys(byExe)))
	}
	for name, b := range d.outputs(t) {
		if bytes.Contains(b, []byte(key)) {
			t.Errorf("%s contains the planted credential", name)
		}
	}
}

// Route 35 (docs/threat-model.md), open: a key in the request body is not
// recognised; the call is recorded without a credential. The key is in
// no output either: bodies are counted, never kept.
func TestHTTPCredentialInBody(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	d := startDaemon(t)
	addr, ca, _ := httpsServer(t)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	key := "CANARYbody" + hex.EncodeToString(nonce)
	body := filepath.Join(filepath.Dir(ca), "body.json")
	if err := os.WriteFile(body, []byte(`{"api_key": "`+key+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, nil, "run", "--intent", "body-key", "--allow", "tcp://"+addr.String(), "--",
		curl, "-sS", "--http1.1", "--cacert", ca, "-d", "@"+body, fmt.Sprintf("https://%s/v1/body", addr)); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	rec := d.waitRecord(t, "the call's http", func(r audit.Record) bool {
		return r.Kind == audit.KindHTTP && r.Session != nil && r.Session.Intent == "body-key"
	})
	if rec.Credential != nil || rec.HTTP.Path != "/v1/body" || rec.HTTP.RequestBytes != int64(len(key)+15) {
		t.Errorf("credential %+v, http %+v (route 35 closed? update docs/threat-model.md)", rec.Credential, rec.HTTP)
	}
	for name, b := range d.outputs(t) {
		if bytes.Contains(b, []byte(key)) {
			t.Errorf("%s contains the key sent in the body", name)
		}
	}
}

// A process outside every session that runs an executable tls.processes
// names (curl here) has its calls recorded, as http records without a
// session; one that runs another executable (python3) has none. Both are
// started after the daemon, so the probes see them from their exec.
func TestHTTPWatchedProcess(t *testing.T) {
	curl := curlAndPython(t)
	cfg := filepath.Join(t.TempDir(), "agentfence.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "tls:\n  processes: [%s]\n", curl), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--config", cfg)
	addr, ca, received := httpsServer(t)
	url := fmt.Sprintf("https://%s/v1/shared", addr)
	py := exec.Command("python3", "-c", fmt.Sprintf(`import ssl, urllib.request as u; u.urlopen(u.Request(%q, data=b"x=1"), context=ssl.create_default_context(cafile=%q)).read()`, url, ca))
	if out, err := py.CombinedOutput(); err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	// After python3, so that its events, were there any, came first.
	cu := exec.Command(curl, "-sS", "--http1.1", "--cacert", ca, "-d", "x=1", url)
	if out, err := cu.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	if n := len(received()); n != 2 {
		t.Fatalf("the server received %d requests, want 2", n)
	}
	var rec *audit.Record
	waitFor(t, "the watched curl's http record", func() bool {
		for _, r := range d.records(t) {
			if r.Kind == audit.KindHTTP && r.Process != nil && r.Process.PID == uint32(cu.Process.Pid) {
				rec = &r
				return true
			}
		}
		return false
	})
	if rec.Session != nil || rec.Agent != nil || rec.Origin != nil {
		t.Errorf("a process outside sessions: session %+v, agent %+v, origin %+v", rec.Session, rec.Agent, rec.Origin)
	}
	if rec.Process.Exe != curl || rec.HTTP == nil || rec.HTTP.Method != "POST" || rec.HTTP.Path != "/v1/shared" || rec.HTTP.Status != 201 {
		t.Errorf("record: process %+v, http %+v", rec.Process, rec.HTTP)
	}
	if dst := rec.Destination; dst == nil || dst.IP != addr.Addr().String() || dst.Port != addr.Port() {
		t.Errorf("destination %+v, want %s", rec.Destination, addr)
	}
	for _, r := range d.records(t) {
		if r.Kind == audit.KindHTTP && r.Process != nil && r.Process.PID == uint32(py.Process.Pid) {
			t.Errorf("python3, not named, has an http record: %+v", r.HTTP)
		}
	}
}
