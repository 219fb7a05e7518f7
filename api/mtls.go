package api

// The optional TCP listener of the API, authenticated by mutual TLS with
// X.509 SVIDs and authorised by exact SPIFFE ID.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/agentfence/agentfence/config"
)

// MTLSConfig builds the TLS configuration of the SPIFFE listener from cfg.
//
// The daemon's own X.509 SVID and the trust bundle come either from the
// SPIFFE Workload API at cfg.SVID.WorkloadAPISocket (kept up to date as the
// agent rotates them) or from cfg.SVID.CertFile, KeyFile and BundleFile
// (read once; a restart picks up new files). Every client must present an
// X.509 SVID that chains to the bundle of its trust domain, and its SPIFFE ID
// must be exactly one of cfg.AllowedIDs; anything else fails the TLS
// handshake, so no request from it ever reaches an http.Handler. The minimum
// version is TLS 1.2; TLS 1.3 is negotiated whenever the client offers it.
//
// With the Workload API, ctx bounds only the wait for the first SVID:
// MTLSConfig blocks until the agent answers, so give ctx a deadline. The
// returned closer releases the Workload API connection (it does nothing for
// files); close it after the listener is closed. It is safe to close twice.
func MTLSConfig(ctx context.Context, cfg config.SPIFFE) (*tls.Config, io.Closer, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("authz.spiffe.trust_domain %q: %v", cfg.TrustDomain, err)
	}
	allowed, err := parseAllowedIDs(cfg.AllowedIDs)
	if err != nil {
		return nil, nil, err
	}

	var (
		svids   x509svid.Source
		bundles x509bundle.Source
		closer  io.Closer = noSourceCloser{}
	)
	switch s := cfg.SVID; {
	case s.WorkloadAPISocket != "" && (s.CertFile != "" || s.KeyFile != "" || s.BundleFile != ""):
		return nil, nil, errors.New("authz.spiffe.svid: set either workload_api_socket or cert_file/key_file/bundle_file, not both")
	case s.WorkloadAPISocket != "":
		src, err := svidFromWorkloadAPI(ctx, s.WorkloadAPISocket, td)
		if err != nil {
			return nil, nil, err
		}
		// The source also serves federated bundles, so an allowed ID in a
		// federated trust domain is verified against that domain's bundle.
		svids, bundles = src, src
		closer = &sourceCloser{c: src}
	case s.CertFile != "" || s.KeyFile != "" || s.BundleFile != "":
		svid, bundle, err := svidFromFiles(s, td)
		if err != nil {
			return nil, nil, err
		}
		// Only the one trust domain's bundle is known: an ID elsewhere could
		// never authenticate, which is a configuration mistake.
		for i, id := range allowed {
			if id.TrustDomain() != td {
				return nil, nil, fmt.Errorf("authz.spiffe.allowed_ids[%d] %q: not in trust domain %q, and bundle_file only holds that trust domain's bundle",
					i, id, td.Name())
			}
		}
		svids, bundles = svid, bundle
	default:
		return nil, nil, errors.New("authz.spiffe.svid: needs workload_api_socket or cert_file, key_file and bundle_file")
	}

	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// VerifyPeerCertificate is not called on a resumed session, so a
		// client could come back on a ticket after the Workload API rotated
		// its CA out of the bundle. A full handshake every time costs
		// little here.
		SessionTicketsDisabled: true,
	}
	// Sets ClientAuth to RequireAnyClientCert and VerifyPeerCertificate to
	// the SPIFFE verification (chain to the peer's trust-domain bundle, then
	// the authorizer), replacing the web-PKI checks that do not apply.
	tlsconfig.HookMTLSServerConfig(tc, svids, bundles, tlsconfig.AuthorizeOneOf(allowed...))
	return tc, closer, nil
}

// SPIFFEID returns the SPIFFE ID of the client of a request that came over
// the mTLS listener; ok is false for a request without TLS or without a
// client certificate (such as one on the unix socket).
//
// The ID is read from the leaf certificate the client presented. It is
// authenticated only because a listener configured by MTLSConfig refuses, in
// the handshake, every certificate that does not verify against the bundle
// or whose ID is not allowed; do not use SPIFFEID with any other TLS config.
func SPIFFEID(r *http.Request) (spiffeid.ID, bool) {
	if r.TLS == nil || !r.TLS.HandshakeComplete || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}

// ListenMTLS listens on cfg.ListenAddr (TCP) and returns a listener whose
// connections are TLS with the configuration of MTLSConfig. The handshake
// runs on the first read or write of a connection (http.Server starts it
// itself). The closer is MTLSConfig's: close it after the listener.
func ListenMTLS(ctx context.Context, cfg config.SPIFFE) (net.Listener, io.Closer, error) {
	if cfg.ListenAddr == "" {
		return nil, nil, errors.New("authz.spiffe.listen_addr: not set")
	}
	tc, closer, err := MTLSConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", cfg.ListenAddr)
	if err != nil {
		closer.Close()
		return nil, nil, fmt.Errorf("authz.spiffe.listen_addr: %w", err)
	}
	return tls.NewListener(l, tc), closer, nil
}

func parseAllowedIDs(ids []string) ([]spiffeid.ID, error) {
	if len(ids) == 0 {
		return nil, errors.New("authz.spiffe.allowed_ids: must list at least one SPIFFE ID (none would refuse every client)")
	}
	out := make([]spiffeid.ID, 0, len(ids))
	for i, s := range ids {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("authz.spiffe.allowed_ids[%d] %q is not a valid SPIFFE ID: %v", i, s, err)
		}
		out = append(out, id)
	}
	return out, nil
}

// svidFromFiles loads the SVID and the bundle from files and checks that they
// belong together: the SVID is in trust domain td and verifies (chain and
// validity period) against the bundle.
func svidFromFiles(s config.SVID, td spiffeid.TrustDomain) (*x509svid.SVID, *x509bundle.Bundle, error) {
	for _, f := range []struct{ key, val string }{
		{"cert_file", s.CertFile}, {"key_file", s.KeyFile}, {"bundle_file", s.BundleFile},
	} {
		if f.val == "" {
			return nil, nil, fmt.Errorf("authz.spiffe.svid.%s: must be set with the other SVID files", f.key)
		}
	}
	svid, err := x509svid.Load(s.CertFile, s.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("authz.spiffe.svid: loading SVID from cert_file %s and key_file %s: %w", s.CertFile, s.KeyFile, err)
	}
	bundle, err := x509bundle.Load(td, s.BundleFile)
	if err != nil {
		return nil, nil, fmt.Errorf("authz.spiffe.svid.bundle_file %s: %w", s.BundleFile, err)
	}
	if bundle.Empty() {
		return nil, nil, fmt.Errorf("authz.spiffe.svid.bundle_file %s: holds no CA certificate", s.BundleFile)
	}
	if err := checkOwnSVID(svid, bundle, td); err != nil {
		return nil, nil, fmt.Errorf("authz.spiffe.svid: cert_file %s with bundle_file %s: %w", s.CertFile, s.BundleFile, err)
	}
	return svid, bundle, nil
}

// svidFromWorkloadAPI connects to the Workload API and waits for the first SVID.
func svidFromWorkloadAPI(ctx context.Context, addr string, td spiffeid.TrustDomain) (*workloadapi.X509Source, error) {
	// config validation accepts a bare absolute path; the client wants a URI.
	if strings.HasPrefix(addr, "/") {
		addr = "unix://" + addr
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return nil, fmt.Errorf("authz.spiffe.svid.workload_api_socket %q: %v", addr, err)
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return nil, fmt.Errorf("authz.spiffe.svid.workload_api_socket %s: no X.509 SVID from the Workload API: %w", addr, err)
	}
	svid, err := src.GetX509SVID()
	if err == nil {
		var bundle *x509bundle.Bundle
		bundle, err = src.GetX509BundleForTrustDomain(td)
		if err == nil {
			err = checkOwnSVID(svid, bundle, td)
		}
	}
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("authz.spiffe.svid.workload_api_socket %s: %w", addr, err)
	}
	return src, nil
}

func checkOwnSVID(svid *x509svid.SVID, bundle *x509bundle.Bundle, td spiffeid.TrustDomain) error {
	if svid.ID.TrustDomain() != td {
		return fmt.Errorf("the daemon's SVID %s is not in trust_domain %q", svid.ID, td.Name())
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		return fmt.Errorf("the daemon's SVID %s does not verify against the trust bundle of %q (wrong bundle, or SVID expired?): %w",
			svid.ID, td.Name(), err)
	}
	return nil
}

type noSourceCloser struct{}

func (noSourceCloser) Close() error { return nil }

type sourceCloser struct {
	once sync.Once
	c    io.Closer
	err  error
}

func (o *sourceCloser) Close() error {
	o.once.Do(func() { o.err = o.c.Close() })
	return o.err
}
