// Package saas is how the demo's programs reach the SaaS API stand-in: over
// loopback, with the demo's own DNS server and certificates, so the demo
// needs nothing from the host's resolver or trust store.
package saas

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Dial says how a client reaches the API.
type Dial struct {
	// DNS is the DNS server (UDP) names are resolved with; "" for the
	// host's resolver.
	DNS string
	// Addr, if set, is dialled whatever the URL names: an agent that knows
	// the address needs no DNS, so a refused name does not stop it.
	Addr string
	// CA is a PEM file of certificates to trust for HTTPS; "" for the
	// host's.
	CA string
}

// Client returns an HTTP client that dials as d says.
func (d Dial) Client() (*http.Client, error) {
	tlsConf := &tls.Config{}
	if d.CA != "" {
		pem, err := os.ReadFile(d.CA)
		if err != nil {
			return nil, err
		}
		tlsConf.RootCAs = x509.NewCertPool()
		if !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates", d.CA)
		}
	}
	dialer := &net.Dialer{}
	if d.DNS != "" {
		dialer.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", d.DNS)
		}}
	}
	dial := dialer.DialContext
	if d.Addr != "" {
		dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, d.Addr)
		}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, TLSClientConfig: tlsConf}}, nil
}

// CreateTicket posts a ticket to the API at url with key as a bearer
// token, and returns the API's answer. An answer other than 2xx is an
// error.
func CreateTicket(ctx context.Context, c *http.Client, url, key, title string) (string, error) {
	body, _ := json.Marshal(map[string]string{"title": title})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	text := strings.TrimSpace(string(answer))
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("%s: %s", resp.Status, text)
	}
	return text, nil
}
