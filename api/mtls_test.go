package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/agentfence/agentfence/config"
)

const (
	mtlsServerID  = "spiffe://example.org/agentfenced"
	mtlsAllowedID = "spiffe://example.org/agent-launcher"
	mtlsRogueID   = "spiffe://example.org/rogue"
)

// mtlsCA is a test certificate authority for one trust domain.
type mtlsCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newMTLSKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mtlsSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newMTLSCA(t *testing.T, td string) *mtlsCA {
	t.Helper()
	key := newMTLSKey(t)
	u, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{
		SerialNumber:          mtlsSerial(t),
		Subject:               pkix.Name{Organization: []string{"agentfence test"}, CommonName: td + " CA"},
		URIs:                  []*url.URL{u},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &mtlsCA{td: spiffeid.RequireTrustDomainFromString(td), cert: cert, key: key}
}

// issue makes an X.509 SVID for id signed by ca.
func (ca *mtlsCA) issue(t *testing.T, id string) *x509svid.SVID {
	t.Helper()
	key := newMTLSKey(t)
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: mtlsSerial(t),
		Subject:      pkix.Name{Organization: []string{"agentfence test"}},
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(der, mtlsPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func (ca *mtlsCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

func mtlsPKCS8(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeMTLSPEM(t *testing.T, path, typ string, blocks ...[]byte) string {
	t.Helper()
	var out []byte
	for _, b := range blocks {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})...)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// mtlsFixture is a trust domain with the daemon's SVID written as files.
type mtlsFixture struct {
	dir               string
	ca, foreign       *mtlsCA
	server            *x509svid.SVID
	certFile          string
	keyFile           string
	bundleFile        string
	foreignBundleFile string
}

func newMTLSFixture(t *testing.T) *mtlsFixture {
	t.Helper()
	f := &mtlsFixture{dir: t.TempDir(), ca: newMTLSCA(t, "example.org"), foreign: newMTLSCA(t, "other.org")}
	f.server = f.ca.issue(t, mtlsServerID)
	f.certFile = writeMTLSPEM(t, filepath.Join(f.dir, "svid.pem"), "CERTIFICATE", f.server.Certificates[0].Raw)
	f.keyFile = writeMTLSPEM(t, filepath.Join(f.dir, "svid.key"), "PRIVATE KEY",
		mtlsPKCS8(t, f.server.PrivateKey.(*ecdsa.PrivateKey)))
	f.bundleFile = writeMTLSPEM(t, filepath.Join(f.dir, "bundle.pem"), "CERTIFICATE", f.ca.cert.Raw)
	f.foreignBundleFile = writeMTLSPEM(t, filepath.Join(f.dir, "foreign-bundle.pem"), "CERTIFICATE", f.foreign.cert.Raw)
	return f
}

func (f *mtlsFixture) config() config.SPIFFE {
	return config.SPIFFE{
		ListenAddr:  "127.0.0.1:0",
		TrustDomain: "example.org",
		AllowedIDs:  []string{mtlsAllowedID},
		SVID:        config.SVID{CertFile: f.certFile, KeyFile: f.keyFile, BundleFile: f.bundleFile},
	}
}

// serveMTLS serves an echo of SPIFFEID on ListenMTLS and returns its URL.
func serveMTLS(t *testing.T, cfg config.SPIFFE) string {
	t.Helper()
	l, closer, err := ListenMTLS(context.Background(), cfg)
	if err != nil {
		t.Fatalf("ListenMTLS: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, ok := SPIFFEID(r)
			if !ok {
				http.Error(w, "no SPIFFE ID", http.StatusUnauthorized)
				return
			}
			io.WriteString(w, id.String())
		}),
		ReadHeaderTimeout: 5 * time.Second,
		// Handshake refusals are logged here; they end before Cleanup.
		ErrorLog: log.New(mtlsLogWriter{t}, "server: ", 0),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		if err := closer.Close(); err != nil {
			t.Errorf("closer: %v", err)
		}
	})
	return "https://" + l.Addr().String() + "/"
}

type mtlsLogWriter struct{ t *testing.T }

func (w mtlsLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func mtlsGet(t *testing.T, url string, tc *tls.Config) (int, string, error) {
	t.Helper()
	c := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func TestMTLSAuthorization(t *testing.T) {
	f := newMTLSFixture(t)
	url := serveMTLS(t, f.config())

	// Clients verify the server as spiffe://example.org/agentfenced.
	serverOK := tlsconfig.AuthorizeID(spiffeid.RequireFromString(mtlsServerID))
	client := func(svid *x509svid.SVID) *tls.Config {
		return tlsconfig.MTLSClientConfig(svid, f.ca.bundle(), serverOK)
	}

	t.Run("allowed", func(t *testing.T) {
		code, body, err := mtlsGet(t, url, client(f.ca.issue(t, mtlsAllowedID)))
		if err != nil {
			t.Fatalf("allowed client refused: %v", err)
		}
		if code != http.StatusOK || body != mtlsAllowedID {
			t.Fatalf("got %d %q, want 200 %q", code, body, mtlsAllowedID)
		}
	})
	t.Run("allowed TLS 1.2", func(t *testing.T) {
		tc := client(f.ca.issue(t, mtlsAllowedID))
		tc.MaxVersion = tls.VersionTLS12
		code, body, err := mtlsGet(t, url, tc)
		if err != nil || code != http.StatusOK || body != mtlsAllowedID {
			t.Fatalf("got %d %q %v, want 200 %q", code, body, err, mtlsAllowedID)
		}
	})

	refused := []struct {
		name string
		tc   func() *tls.Config
	}{
		{"rogue ID", func() *tls.Config { return client(f.ca.issue(t, mtlsRogueID)) }},
		{"rogue ID TLS 1.2", func() *tls.Config {
			tc := client(f.ca.issue(t, mtlsRogueID))
			tc.MaxVersion = tls.VersionTLS12
			return tc
		}},
		// Another CA minting the allowed ID itself must not get in.
		{"foreign CA, allowed ID", func() *tls.Config { return client(f.foreign.issue(t, mtlsAllowedID)) }},
		{"foreign trust domain", func() *tls.Config { return client(f.foreign.issue(t, "spiffe://other.org/agent-launcher")) }},
		{"no client certificate", func() *tls.Config { return tlsconfig.TLSClientConfig(f.ca.bundle(), serverOK) }},
		{"TLS 1.1", func() *tls.Config {
			tc := client(f.ca.issue(t, mtlsAllowedID))
			tc.MinVersion, tc.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			return tc
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			// With TLS 1.3 the client finishes its side of the handshake
			// before the server checks its certificate, so the refusal
			// shows as an error on the request (the server's alert), not
			// necessarily in Handshake.
			code, body, err := mtlsGet(t, url, tt.tc())
			if err == nil {
				t.Fatalf("request succeeded: %d %q", code, body)
			}
			// A refusal by the server arrives as a TLS alert; anything
			// else (a dial error, a timeout) would not prove a refusal.
			if !strings.Contains(err.Error(), "remote error: tls:") {
				t.Fatalf("request failed without a TLS alert from the server: %v", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// A resumed TLS session skips VerifyPeerCertificate, so the server must not
// offer resumption.
func TestMTLSNoResumption(t *testing.T) {
	f := newMTLSFixture(t)
	url := serveMTLS(t, f.config())
	tc := tlsconfig.MTLSClientConfig(f.ca.issue(t, mtlsAllowedID), f.ca.bundle(),
		tlsconfig.AuthorizeID(spiffeid.RequireFromString(mtlsServerID)))
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for _, max := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		tc.MaxVersion = max
		for i := range 2 {
			c := &http.Client{Transport: &http.Transport{
				TLSClientConfig:   tc,
				DisableKeepAlives: true,
			}, Timeout: 10 * time.Second}
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.TLS.DidResume {
				t.Fatalf("TLS version %x, connection %d resumed a session", max, i)
			}
		}
	}
}

func TestMTLSSPIFFEIDWithoutTLS(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/v1/sessions", nil)
	if id, ok := SPIFFEID(r); ok {
		t.Fatalf("plain request has SPIFFE ID %s", id)
	}
	r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	if id, ok := SPIFFEID(r); ok {
		t.Fatalf("TLS request without client certificate has SPIFFE ID %s", id)
	}
}

func TestMTLSConfigErrors(t *testing.T) {
	f := newMTLSFixture(t)
	otherKey := writeMTLSPEM(t, filepath.Join(f.dir, "other.key"), "PRIVATE KEY", mtlsPKCS8(t, newMTLSKey(t)))
	otherTDServer := f.foreign.issue(t, "spiffe://other.org/agentfenced")
	otherTDCert := writeMTLSPEM(t, filepath.Join(f.dir, "other-td.pem"), "CERTIFICATE", otherTDServer.Certificates[0].Raw)
	otherTDKey := writeMTLSPEM(t, filepath.Join(f.dir, "other-td.key"), "PRIVATE KEY",
		mtlsPKCS8(t, otherTDServer.PrivateKey.(*ecdsa.PrivateKey)))
	garbage := filepath.Join(f.dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		mod  func(*config.SPIFFE)
		want []string // substrings of the error
	}{
		{"bad allowed ID", func(c *config.SPIFFE) {
			c.AllowedIDs = []string{mtlsAllowedID, "spiffe://example.org/Bad ID"}
		}, []string{"allowed_ids[1]", `"spiffe://example.org/Bad ID"`, "not a valid SPIFFE ID"}},
		{"allowed ID not a SPIFFE URI", func(c *config.SPIFFE) { c.AllowedIDs = []string{"https://example.org/x"} },
			[]string{"allowed_ids[0]", `"https://example.org/x"`}},
		{"no allowed IDs", func(c *config.SPIFFE) { c.AllowedIDs = nil }, []string{"allowed_ids", "at least one"}},
		{"allowed ID in another trust domain", func(c *config.SPIFFE) {
			c.AllowedIDs = []string{"spiffe://other.org/agent-launcher"}
		}, []string{"allowed_ids[0]", "other.org", "not in trust domain"}},
		{"bad trust domain", func(c *config.SPIFFE) { c.TrustDomain = "Example.ORG" }, []string{"trust_domain", "Example.ORG"}},
		{"missing cert file", func(c *config.SPIFFE) { c.SVID.CertFile = filepath.Join(f.dir, "nope.pem") },
			[]string{"cert_file", "nope.pem", "no such file"}},
		{"missing key file", func(c *config.SPIFFE) { c.SVID.KeyFile = filepath.Join(f.dir, "nope.key") },
			[]string{"key_file", "nope.key", "no such file"}},
		{"key does not match cert", func(c *config.SPIFFE) { c.SVID.KeyFile = otherKey },
			[]string{"other.key", "does not match"}},
		{"cert file is not PEM", func(c *config.SPIFFE) { c.SVID.CertFile = garbage }, []string{"cert_file", "garbage.pem"}},
		{"missing bundle file", func(c *config.SPIFFE) { c.SVID.BundleFile = filepath.Join(f.dir, "nope-bundle.pem") },
			[]string{"bundle_file", "nope-bundle.pem", "no such file"}},
		{"bundle for another trust domain", func(c *config.SPIFFE) { c.SVID.BundleFile = f.foreignBundleFile },
			[]string{"foreign-bundle.pem", "does not verify against the trust bundle"}},
		{"SVID in another trust domain", func(c *config.SPIFFE) {
			c.SVID.CertFile, c.SVID.KeyFile, c.SVID.BundleFile = otherTDCert, otherTDKey, f.foreignBundleFile
		}, []string{"spiffe://other.org/agentfenced", `not in trust_domain "example.org"`}},
		{"incomplete files", func(c *config.SPIFFE) { c.SVID.BundleFile = "" }, []string{"bundle_file", "must be set"}},
		{"no SVID source", func(c *config.SPIFFE) { c.SVID = config.SVID{} }, []string{"svid", "workload_api_socket"}},
		{"both SVID sources", func(c *config.SPIFFE) { c.SVID.WorkloadAPISocket = "unix:///run/spire/agent.sock" },
			[]string{"svid", "not both"}},
		{"bad workload API address", func(c *config.SPIFFE) { c.SVID = config.SVID{WorkloadAPISocket: "http://x"} },
			[]string{"workload_api_socket", "http://x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := f.config()
			tt.mod(&cfg)
			tc, closer, err := MTLSConfig(context.Background(), cfg)
			if err == nil {
				closer.Close()
				t.Fatalf("MTLSConfig succeeded (%v)", tc != nil)
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}

	t.Run("listen address in use", func(t *testing.T) {
		cfg := f.config()
		l, closer, err := ListenMTLS(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		defer l.Close()
		cfg.ListenAddr = l.Addr().String()
		if l2, _, err := ListenMTLS(context.Background(), cfg); err == nil {
			l2.Close()
			t.Fatal("second ListenMTLS on the same address succeeded")
		} else if !strings.Contains(err.Error(), "listen_addr") {
			t.Errorf("error %q does not name listen_addr", err)
		}
	})
}

// Without a Workload API agent, MTLSConfig must give up when ctx ends and
// name the socket. (TestMTLSWorkloadAPI covers an agent that answers.)
func TestMTLSWorkloadAPIUnavailable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	cfg := config.SPIFFE{
		ListenAddr:  "127.0.0.1:0",
		TrustDomain: "example.org",
		AllowedIDs:  []string{mtlsAllowedID},
		SVID:        config.SVID{WorkloadAPISocket: sock},
	}
	start := time.Now()
	_, _, err := MTLSConfig(ctx, cfg)
	if err == nil {
		t.Fatal("MTLSConfig succeeded without a Workload API")
	}
	if !strings.Contains(err.Error(), "unix://"+sock) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q does not name the socket or the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("MTLSConfig took %s after a 300ms deadline", d)
	}
}
