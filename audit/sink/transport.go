// Package sink delivers stamped audit records to SIEMs: the Pipeline fans
// records out to per-sink on-disk spools, and one goroutine per sink
// drains its spool through a transport (stdout, file, syslog, HEC,
// webhook) with bounded exponential backoff.
package sink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// message is one record ready for a transport: the decoded record (for
// headers such as syslog severity) and its payload in the sink's format.
type message struct {
	rec     *audit.Record // nil for headless transports, else at least its header
	payload []byte
	// replay marks a record that was in the spool, unacknowledged, when the
	// sink started: the previous process may have delivered it already.
	replay bool
}

// headless is implemented by transports that write the payload alone and
// never look at the record.
type headless interface{ headless() }

// decodeHeader fills in the fields of a record the transports use around
// the payload: time, host, kind and verdict. Skipping the rest (json still
// scans it, but allocates nothing for it) is several times cheaper than
// decoding the record.
func decodeHeader(line []byte, r *audit.Record) error {
	var h struct {
		Time    time.Time `json:"time"`
		Kind    string    `json:"kind"`
		Host    string    `json:"host"`
		Outcome *struct {
			Verdict string `json:"verdict"`
		} `json:"outcome"`
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return err
	}
	r.Time, r.Kind, r.Host = h.Time, h.Kind, h.Host
	if h.Outcome != nil {
		r.Outcome = &audit.Outcome{Verdict: h.Outcome.Verdict}
	}
	return nil
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

func (*writerTransport) headless() {}

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
