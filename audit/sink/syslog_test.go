package sink

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/privtest"
)

type pki struct{ ca, srvCert, srvKey, cliCert, cliKey string }

// newPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA.
func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "agentfence test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "PRIVATE KEY", kder)
	}
	var p pki
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	p.srvCert, p.srvKey = issue(2, "server", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.cliCert, p.cliKey = issue(3, "client", x509.ExtKeyUsageClientAuth, nil)
	return p
}

// rsyslog is one rsyslogd instance listening on a loopback port and
// writing the MSG part of every message it receives to out.
type rsyslog struct {
	addr string
	out  string
}

// startRsyslog runs rsyslogd in the foreground with its own config, pid
// file and work directory. tlsMode is "" (plain TCP), "anon" (TLS, no
// client certificate) or "x509/certvalid" (client certificate required).
func startRsyslog(t *testing.T, p *pki, tlsMode string) *rsyslog {
	t.Helper()
	bin, err := exec.LookPath("rsyslogd")
	if err != nil {
		for _, c := range []string{"/usr/sbin/rsyslogd", "/sbin/rsyslogd"} {
			if _, serr := os.Stat(c); serr == nil {
				bin, err = c, nil
			}
		}
	}
	if err != nil {
		privtest.Unavailable(t, "rsyslogd not installed (apt-get install -y rsyslog rsyslog-gnutls)")
	}
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	os.Mkdir(work, 0o700)
	out := filepath.Join(dir, "received.log")
	port := freePort(t)

	var conf strings.Builder
	fmt.Fprintf(&conf, "global(workDirectory=%q maxMessageSize=\"256k\"", work)
	if tlsMode != "" {
		fmt.Fprintf(&conf, " defaultNetstreamDriverCAFile=%q defaultNetstreamDriverCertFile=%q defaultNetstreamDriverKeyFile=%q",
			p.ca, p.srvCert, p.srvKey)
	}
	conf.WriteString(")\n")
	if tlsMode != "" {
		fmt.Fprintf(&conf, "module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=%q)\n", tlsMode)
	} else {
		conf.WriteString("module(load=\"imtcp\")\n")
	}
	fmt.Fprintf(&conf, "template(name=\"msgonly\" type=\"string\" string=\"%%msg%%\\n\")\n")
	fmt.Fprintf(&conf, "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"%d\" ruleset=\"audit\")\n", port)
	fmt.Fprintf(&conf, "ruleset(name=\"audit\") { action(type=\"omfile\" file=%q template=\"msgonly\" flushOnTXEnd=\"on\" asyncWriting=\"off\") }\n", out)
	confPath := filepath.Join(dir, "rsyslog.conf")
	os.WriteFile(confPath, []byte(conf.String()), 0o600)

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslog.pid"))
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		privtest.Unavailable(t, "cannot start rsyslogd: "+err.Error())
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("rsyslogd exited: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogd not listening on %s: %s", addr, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &rsyslog{addr: addr, out: out}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// received returns the non-empty lines rsyslog has written so far.
func (r *rsyslog) received() [][]byte {
	b, _ := os.ReadFile(r.out)
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

func TestSyslogToRsyslog(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir)
	for _, tc := range []struct {
		name string
		mode string
		cfg  func(addr string) *audit.SyslogConfig
	}{
		{"tcp", "", func(a string) *audit.SyslogConfig { return &audit.SyslogConfig{Address: a} }},
		{"tls", "anon", func(a string) *audit.SyslogConfig {
			return &audit.SyslogConfig{Address: a, TLS: true, CAFile: p.ca}
		}},
		{"tls-client-cert", "x509/certvalid", func(a string) *audit.SyslogConfig {
			return &audit.SyslogConfig{Address: a, TLS: true, CAFile: p.ca, CertFile: p.cliCert, KeyFile: p.cliKey}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := startRsyslog(t, &p, tc.mode)
			pl := newPipeline(t, t.TempDir(), nil, audit.SinkConfig{
				Name: "rsyslog-" + tc.name, Type: audit.SinkSyslog, Syslog: tc.cfg(rs.addr),
				Retry: &audit.RetryConfig{InitialBackoff: "20ms", MaxBackoff: "200ms"},
			})
			defer pl.Close()
			const n = 50
			for i := range n {
				pl.Emit(testRecord(i))
			}
			eventually(t, 15*time.Second, fmt.Sprintf("%d messages in rsyslog output", n), func() bool {
				return len(rs.received()) >= n
			})
			lines := rs.received()
			rep := verifyLines(t, lines) // intact bytes: the hash chain holds
			if rep.Records != n || rep.FirstSeq != 1 || rep.LastSeq != n {
				t.Fatalf("report %+v", rep)
			}
		})
	}

	t.Run("tls-client-cert-required", func(t *testing.T) {
		// Without a client certificate the x509 listener must not accept
		// records; they stay spooled.
		rs := startRsyslog(t, &p, "x509/certvalid")
		reg := newRegistry()
		pl := newPipeline(t, t.TempDir(), reg, audit.SinkConfig{
			Name: "nocert", Type: audit.SinkSyslog, Syslog: &audit.SyslogConfig{Address: rs.addr, TLS: true, CAFile: p.ca},
			Retry: &audit.RetryConfig{InitialBackoff: "20ms", MaxBackoff: "100ms"},
		})
		pl.Emit(testRecord(1))
		eventually(t, 15*time.Second, "a failed attempt or a rejected message", func() bool {
			return metric(t, reg, "agentfence_sink_records_retried_total", "nocert") > 0 ||
				metric(t, reg, "agentfence_sink_records_delivered_total", "nocert") > 0
		})
		shutdownNow(pl)
		if got := rs.received(); len(got) != 0 {
			t.Fatalf("rsyslog accepted a record from a client without certificate: %q", got)
		}
	})
}
