// Package sink delivers stamped audit records to SIEMs: the Pipeline fans
// records out to per-sink on-disk spools, and one goroutine per sink
// drains its spool through a transport (stdout, file, syslog, HEC,
// webhook) with bounded exponential backoff.
package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/agentfence/agentfence/audit"
)

// message is one record ready for a transport: the decoded record (for
// headers such as syslog severity) and its payload in the sink's format.
type message struct {
	rec     *audit.Record
	payload []byte
}

// transport delivers a batch in order. An error means some prefix may have
// been delivered; the whole batch is sent again (at-least-once).
type transport interface {
	Send(ctx context.Context, batch []message) error
	Close() error
}

// writerTransport writes one payload per line; used for stdout.
type writerTransport struct {
	mu sync.Mutex
	w  io.Writer
}

func (t *writerTransport) Send(_ context.Context, batch []message) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var buf []byte
	for _, m := range batch {
		buf = append(buf, m.payload...)
		buf = append(buf, '\n')
	}
	_, err := t.w.Write(buf)
	return err
}

func (t *writerTransport) Close() error { return nil }

// readSecret reads a secret file. Errors name the field and the path but
// never the content.
func readSecret(field, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", field, path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("%s: %s holds more than one line", field, path)
	}
	return s, nil
}

// tlsConfig builds a client TLS config from the optional CA, client
// certificate and server name.
func tlsConfig(field, caFile, certFile, keyFile, serverName string, insecure bool) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName, InsecureSkipVerify: insecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", field, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file: %s: no PEM certificates", field, caFile)
		}
		c.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file: %w", field, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
