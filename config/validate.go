package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

// FieldError is one problem Validate found: the dotted key, the value it
// holds and what is wrong with it.
type FieldError struct {
	Field  string
	Value  any
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("config: %s: %s (got %s)", e.Field, e.Reason, formatValue(e.Value))
}

func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case Duration:
		return strconv.Quote(v.String())
	case fmt.Stringer:
		return strconv.Quote(v.String())
	}
	return fmt.Sprint(v)
}

// maxSunPath is the longest unix socket path the kernel accepts
// (sizeof(sun_path) less the terminating NUL).
const maxSunPath = 107

// Validate checks every field and returns all problems joined (errors.Join),
// each a *FieldError naming the key and the bad value, or nil.
func (c Config) Validate() error {
	var v validator

	v.socketPath("api_socket", c.APISocket)
	if c.MetricsAddr != "" {
		v.hostPort("metrics_addr", c.MetricsAddr)
	}
	// An empty bpffs_path turns pinning off: the gate then lives only as
	// long as the daemon.
	if c.BPFFSPath != "" {
		v.absPath("bpffs_path", c.BPFFSPath)
	}
	if c.BPFFSPath == "/" {
		v.add("bpffs_path", c.BPFFSPath, "must be a directory below a bpffs mount, not /")
	}
	if c.CgroupRoot != "" {
		v.absPath("cgroup_root", c.CgroupRoot)
	}
	v.absPath("state_dir", c.StateDir)

	// audit
	if c.Audit.File != "-" {
		if c.Audit.File == "" || !filepath.IsAbs(c.Audit.File) {
			v.add("audit.file", c.Audit.File, `must be "-" (standard output) or an absolute path`)
		}
	}
	switch c.Audit.Format {
	case FormatJSON, FormatOCSF:
	default:
		v.add("audit.format", c.Audit.Format, `must be "json" or "ocsf"`)
	}
	// audit.ValidateSinks names fields "sinks[i].<path>" and rejects
	// duplicate names; prefix each problem with the "audit." section.
	if err := audit.ValidateSinks(c.Audit.Sinks); err != nil {
		for _, e := range unjoin(err) {
			v.errs = append(v.errs, fmt.Errorf("config: audit.%w", e))
		}
	}

	// sessions
	s := c.Sessions
	v.positive("sessions.max_ttl", s.MaxTTL)
	v.positive("sessions.default_ttl", s.DefaultTTL)
	if s.DefaultTTL > 0 && s.MaxTTL > 0 && s.DefaultTTL > s.MaxTTL {
		v.add("sessions.default_ttl", s.DefaultTTL,
			fmt.Sprintf("must not exceed sessions.max_ttl (%s)", s.MaxTTL))
	}
	// A window longer than a session lives would record its repeats after
	// it ended.
	switch w := c.Audit.AggregateWindow; {
	case w < 0:
		v.add("audit.aggregate_window", w, "must be 0 (off) or more")
	case w > MaxAggregateWindow:
		v.add("audit.aggregate_window", w, fmt.Sprintf("must not exceed %s", MaxAggregateWindow))
	case s.DefaultTTL > 0 && w > s.DefaultTTL:
		v.add("audit.aggregate_window", w, fmt.Sprintf("must not exceed sessions.default_ttl (%s)", s.DefaultTTL))
	}
	if s.ViolationBudget < 0 {
		v.add("sessions.violation_budget", s.ViolationBudget, "must be 0 or more")
	}
	switch s.DriftAction {
	case DriftQuarantine, DriftKill, DriftNone:
	default:
		v.add("sessions.drift_action", string(s.DriftAction), `must be "quarantine", "kill" or "none"`)
	}
	if s.MaxSessions < 1 || s.MaxSessions > MaxSessionsLimit {
		v.add("sessions.max_sessions", s.MaxSessions,
			fmt.Sprintf("must be between 1 and %d (the sessions the kernel maps hold)", MaxSessionsLimit))
	}

	// authz
	a := c.Authz
	for i, e := range a.Exes {
		v.absPath(fmt.Sprintf("authz.exes[%d]", i), e)
	}
	sp := a.SPIFFE
	if len(a.UIDs) == 0 && len(a.GIDs) == 0 && len(a.Exes) == 0 && sp.ListenAddr == "" {
		v.add("authz", "", "admits no caller: set uids, gids, exes or spiffe.listen_addr")
	}
	if sp.ListenAddr != "" {
		v.spiffe(sp)
	}

	// dns
	if c.DNS.MinTTL < 0 {
		v.add("dns.min_ttl", c.DNS.MinTTL, "must not be negative")
	}
	v.positive("dns.max_ttl", c.DNS.MaxTTL)
	if c.DNS.MinTTL > c.DNS.MaxTTL && c.DNS.MaxTTL > 0 {
		v.add("dns.min_ttl", c.DNS.MinTTL, fmt.Sprintf("must not exceed dns.max_ttl (%s)", c.DNS.MaxTTL))
	}

	// process
	p := c.Process
	if p.AncestryDepth < 1 || p.AncestryDepth > MaxAncestryDepth {
		v.add("process.ancestry_depth", p.AncestryDepth, fmt.Sprintf("must be between 1 and %d", MaxAncestryDepth))
	}
	if p.CacheSize < 1 {
		v.add("process.cache_size", p.CacheSize, "must be 1 or more")
	}
	if p.ExitGrace < 0 {
		v.add("process.exit_grace", p.ExitGrace, "must not be negative")
	}

	for i, n := range c.Credentials.RedactNames {
		if strings.TrimSpace(n) == "" {
			v.add(fmt.Sprintf("credentials.redact_names[%d]", i), n, "must not be empty")
		}
	}
	for i, p := range c.Credentials.RedactPatterns {
		if re, err := regexp.Compile(p); err != nil {
			v.add(fmt.Sprintf("credentials.redact_patterns[%d]", i), p, "is not a regular expression: "+err.Error())
		} else if re.MatchString("") {
			v.add(fmt.Sprintf("credentials.redact_patterns[%d]", i), p, "must not match the empty string")
		}
	}

	v.holders(c.Credentials.Holders)

	t := c.TLS
	if t.Probes != TLSProbesAuto && t.Probes != TLSProbesOff {
		v.add("tls.probes", t.Probes, fmt.Sprintf("must be %q or %q", TLSProbesAuto, TLSProbesOff))
	}
	if t.Query != TLSQueryDrop && t.Query != TLSQueryHash {
		v.add("tls.query", t.Query, fmt.Sprintf("must be %q or %q", TLSQueryDrop, TLSQueryHash))
	}
	for i, n := range t.CredentialHeaders {
		if !validHeaderName(n) {
			v.add(fmt.Sprintf("tls.credential_headers[%d]", i), n, "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
		}
	}
	if len(t.Processes) > MaxTLSProcesses {
		v.add("tls.processes", len(t.Processes), fmt.Sprintf("must name at most %d executables", MaxTLSProcesses))
	}
	seen := map[string]bool{}
	for i, p := range t.Processes {
		at := fmt.Sprintf("tls.processes[%d]", i)
		switch st, err := os.Stat(p); {
		case !filepath.IsAbs(p) || filepath.Clean(p) != p:
			v.add(at, p, "must be an absolute, clean path")
		case err != nil || !st.Mode().IsRegular():
			v.add(at, p, "must be an existing file")
		case seen[p]:
			v.add(at, p, "is named twice")
		}
		seen[p] = true
	}

	for i, k := range c.Kubernetes.RecordLabels {
		if k == "" || len(k) > 317 || strings.ContainsAny(k, " \t\n=,") {
			v.add(fmt.Sprintf("kubernetes.record_labels[%d]", i), k, "must be a label key (e.g. app.kubernetes.io/name)")
		}
	}
	for i, ns := range c.Kubernetes.IgnoreNamespaces {
		if !namespaceName(ns) {
			v.add(fmt.Sprintf("kubernetes.ignore_namespaces[%d]", i), ns, "must be a namespace name (lowercase letters, digits and '-', at most 63)")
		}
	}
	for i, p := range c.Kubernetes.PodCgroups {
		if !filepath.IsLocal(p) || filepath.Clean(p) != p {
			v.add(fmt.Sprintf("kubernetes.pod_cgroups[%d]", i), p, "must be a clean path relative to the cgroup v2 root (e.g. kubepods/burstable)")
		}
	}

	return errors.Join(v.errs...)
}

// holders checks the registered credentials: each names its credential
// by a fingerprint of this node's shape and lists executables that exist.
func (v *validator) holders(hs []Holder) {
	names := map[string]bool{}
	fps := map[string]bool{}
	for i, h := range hs {
		at := fmt.Sprintf("credentials.holders[%d]", i)
		switch {
		case strings.TrimSpace(h.Name) == "":
			v.add(at+".name", h.Name, "must not be empty")
		case names[h.Name]:
			v.add(at+".name", h.Name, "is another holder's name too")
		}
		names[h.Name] = true
		switch {
		case !isHex(h.Fingerprint, 16):
			v.add(at+".fingerprint", h.Fingerprint, "must be 16 lowercase hex digits, as `agentfence credential fingerprint` prints them")
		case fps[h.Fingerprint]:
			v.add(at+".fingerprint", h.Fingerprint, "is registered twice")
		}
		fps[h.Fingerprint] = true
		if len(h.Executables) == 0 {
			v.add(at+".executables", "", "must list the executables that may send the credential")
		}
		for j, e := range h.Executables {
			eat := fmt.Sprintf("%s.executables[%d]", at, j)
			if !filepath.IsAbs(e.Path) {
				v.add(eat+".path", e.Path, "must be an absolute path")
			} else if st, err := os.Stat(e.Path); err != nil || !st.Mode().IsRegular() {
				v.add(eat+".path", e.Path, "must be an existing file")
			}
			if e.SHA256 != "" && !isHex(e.SHA256, 64) {
				v.add(eat+".sha256", e.SHA256, "must be 64 lowercase hex digits")
			}
		}
	}
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110's
// token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune("!#$%&'*+-.^_`|~", c):
		default:
			return false
		}
	}
	return true
}

func (v *validator) spiffe(sp SPIFFE) {
	v.hostPort("authz.spiffe.listen_addr", sp.ListenAddr)
	if !validTrustDomain(sp.TrustDomain) {
		v.add("authz.spiffe.trust_domain", sp.TrustDomain,
			"must be a trust domain name such as \"example.org\" (lowercase letters, digits, '.', '-', '_')")
	}
	if len(sp.AllowedIDs) == 0 {
		v.add("authz.spiffe.allowed_ids", "", "must list at least one SPIFFE ID when the SPIFFE listener is on")
	}
	for i, id := range sp.AllowedIDs {
		rest, ok := strings.CutPrefix(id, "spiffe://")
		td, _, _ := strings.Cut(rest, "/")
		if !ok || !validTrustDomain(td) {
			v.add(fmt.Sprintf("authz.spiffe.allowed_ids[%d]", i), id, `must be a SPIFFE ID "spiffe://<trust-domain>/<path>"`)
		}
	}
	svid := sp.SVID
	files := svid.CertFile != "" || svid.KeyFile != "" || svid.BundleFile != ""
	switch {
	case svid.WorkloadAPISocket != "" && files:
		v.add("authz.spiffe.svid", svid.WorkloadAPISocket, "set either workload_api_socket or cert_file/key_file/bundle_file, not both")
	case svid.WorkloadAPISocket != "":
		addr := svid.WorkloadAPISocket
		if path, _ := strings.CutPrefix(addr, "unix://"); !filepath.IsAbs(path) {
			v.add("authz.spiffe.svid.workload_api_socket", addr, `must be "unix:///path" or an absolute path`)
		}
	case files:
		v.absPath("authz.spiffe.svid.cert_file", svid.CertFile)
		v.absPath("authz.spiffe.svid.key_file", svid.KeyFile)
		v.absPath("authz.spiffe.svid.bundle_file", svid.BundleFile)
	default:
		v.add("authz.spiffe.svid", "", "needs workload_api_socket or cert_file, key_file and bundle_file")
	}
}

// validTrustDomain follows the SPIFFE ID spec: lowercase letters, digits,
// dots, dashes and underscores.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
		return false
	}
	for _, r := range td {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

type validator struct{ errs []error }

func (v *validator) add(field string, value any, reason string) {
	v.errs = append(v.errs, &FieldError{Field: field, Value: value, Reason: reason})
}

func (v *validator) absPath(field, p string) {
	switch {
	case p == "":
		v.add(field, p, "must be set to an absolute path")
	case !filepath.IsAbs(p):
		v.add(field, p, "must be an absolute path")
	case strings.ContainsRune(p, 0):
		v.add(field, p, "must not contain NUL")
	}
}

func (v *validator) socketPath(field, p string) {
	v.absPath(field, p)
	if len(p) > maxSunPath {
		v.add(field, p, fmt.Sprintf("is %d bytes, longer than a unix socket path can be (%d)", len(p), maxSunPath))
	}
	if strings.HasSuffix(p, "/") {
		v.add(field, p, "must name a socket file, not a directory")
	}
}

func (v *validator) hostPort(field, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(field, addr, `must be "host:port" (e.g. "127.0.0.1:9090" or ":9090")`)
		return
	}
	// Port 0 picks a free port (the daemon logs which): tests use it.
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		v.add(field, addr, "port must be a number between 0 and 65535")
	}
	if strings.ContainsAny(host, " /\\") {
		v.add(field, addr, "host must be an IP address or a host name")
	}
}

func (v *validator) positive(field string, d Duration) {
	if d <= 0 {
		v.add(field, d, "must be positive")
	}
}

// unjoin flattens an errors.Join tree into its leaves.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unjoin(e)...)
		}
		return out
	}
	return []error{err}
}

// namespaceName reports whether s is a Kubernetes namespace name (an RFC
// 1123 label).
func namespaceName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
