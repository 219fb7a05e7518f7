package sink

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agentfence/agentfence/audit"
)

const hecPath = "/services/collector/event"

// httpTransport POSTs a batch per request: Splunk HEC event format or a
// JSON array for generic webhooks.
type httpTransport struct {
	url     string
	client  *http.Client
	headers http.Header
	gzip    bool
	hec     *audit.HECConfig // nil for webhooks
}

func newHECTransport(c *audit.HECConfig) (*httpTransport, error) {
	token, err := readSecret("hec.token_file", c.TokenFile)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("hec.url: %w", err)
	}
	if !strings.HasSuffix(u.Path, hecPath) {
		u.Path = strings.TrimSuffix(u.Path, "/") + hecPath
	}
	tc, err := tlsConfig("hec", c.CAFile, "", "", "", c.InsecureSkipVerify)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	h.Set("Authorization", "Splunk "+token)
	h.Set("Content-Type", "application/json")
	return &httpTransport{
		url: u.String(), headers: h, gzip: c.Gzip, hec: c,
		client: newHTTPClient(tc, audit.DurationOr(c.Timeout, audit.DefaultTimeout)),
	}, nil
}

func newWebhookTransport(c *audit.WebhookConfig) (*httpTransport, error) {
	h := http.Header{}
	for k, v := range c.Headers {
		h.Set(k, v)
	}
	for k, file := range c.HeaderFiles {
		v, err := readSecret("webhook.header_files."+k, file)
		if err != nil {
			return nil, err
		}
		h.Set(k, v)
	}
	h.Set("Content-Type", "application/json")
	tc, err := tlsConfig("webhook", c.CAFile, "", "", "", c.InsecureSkipVerify)
	if err != nil {
		return nil, err
	}
	return &httpTransport{
		url: c.URL, headers: h, gzip: c.Gzip,
		client: newHTTPClient(tc, audit.DurationOr(c.Timeout, audit.DefaultTimeout)),
	}, nil
}

func newHTTPClient(tc *tls.Config, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: tr, Timeout: timeout}
}

// hecEvent is one event in the HEC event-endpoint envelope.
type hecEvent struct {
	Time       string          `json:"time"`
	Host       string          `json:"host,omitempty"`
	Source     string          `json:"source,omitempty"`
	Sourcetype string          `json:"sourcetype,omitempty"`
	Index      string          `json:"index,omitempty"`
	Event      json.RawMessage `json:"event"`
}

func (t *httpTransport) body(batch []message) ([]byte, error) {
	var buf bytes.Buffer
	if t.hec == nil {
		buf.WriteByte('[')
		for i, m := range batch {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(m.payload)
		}
		buf.WriteByte(']')
		return buf.Bytes(), nil
	}
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	st := t.hec.Sourcetype
	if st == "" {
		st = "agentfence:audit"
	}
	for _, m := range batch {
		ms := m.rec.Time.UnixMilli()
		ev := hecEvent{
			// Seconds with millisecond fraction, as HEC expects.
			Time:       strconv.FormatInt(ms/1000, 10) + "." + fmt.Sprintf("%03d", ms%1000),
			Host:       m.rec.Host,
			Source:     t.hec.Source,
			Sourcetype: st,
			Index:      t.hec.Index,
			Event:      m.payload,
		}
		if err := enc.Encode(&ev); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// statusError is a non-2xx answer; the body excerpt helps operators and
// cannot contain our token (receivers do not echo Authorization).
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

func (t *httpTransport) Send(ctx context.Context, batch []message) error {
	body, err := t.body(batch)
	if err != nil {
		return err
	}
	if t.gzip {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(body)
		if err := zw.Close(); err != nil {
			return err
		}
		body = zb.Bytes()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = t.headers.Clone()
	if t.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return redactURLError(err)
	}
	defer resp.Body.Close()
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // reuse the connection
	if resp.StatusCode/100 != 2 {
		// Every failure is retried, 4xx included: a revoked token or a full
		// index is fixed by an operator, and dropping would lose records.
		return &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(excerpt))}
	}
	return nil
}

// redactURLError keeps transport errors free of query strings, which some
// webhook receivers use for secrets.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			ue.URL = u.String()
		}
		return ue
	}
	return err
}

func (t *httpTransport) Close() error {
	t.client.CloseIdleConnections()
	return nil
}
