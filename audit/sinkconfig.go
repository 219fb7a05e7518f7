package audit

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Sink types.
const (
	SinkStdout  = "stdout"
	SinkFile    = "file"
	SinkSyslog  = "syslog"
	SinkHEC     = "hec"
	SinkWebhook = "webhook"
)

// Encodings a sink can emit.
const (
	FormatJSON = "json" // the Record as-is, one object per line
	FormatOCSF = "ocsf" // OCSF event, see docs/audit.md for the mapping
)

// Defaults applied by the accessors below when a field is left empty.
const (
	DefaultSpoolMaxBytes  = 64 << 20
	DefaultBatchSize      = 100
	DefaultFlushInterval  = time.Second
	DefaultTimeout        = 10 * time.Second
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultFileMaxSizeMB  = 100
	DefaultFileMaxFiles   = 5
	DefaultSyslogAppName  = "agentfence"
	DefaultSyslogFacility = 13 // log audit (RFC 5424 §6.2.1)
)

// SinkConfig describes one audit sink in the daemon's YAML config
// (decoded with sigs.k8s.io/yaml, hence the json tags). Durations are Go
// duration strings ("5s"). Secrets are never inline: they are read from
// files named here, so the config itself can be world-readable and logged.
type SinkConfig struct {
	// Name identifies the sink in metrics (label sink), logs, gap records
	// (source "spool:<name>") and the default spool directory.
	Name string `json:"name"`
	// Type is stdout, file, syslog, hec or webhook.
	Type string `json:"type"`
	// Format is json (default) or ocsf.
	Format string `json:"format,omitempty"`
	// Filter selects which records this sink receives; nil means all.
	Filter *FilterConfig `json:"filter,omitempty"`

	File    *FileConfig    `json:"file,omitempty"`
	Syslog  *SyslogConfig  `json:"syslog,omitempty"`
	HEC     *HECConfig     `json:"hec,omitempty"`
	Webhook *WebhookConfig `json:"webhook,omitempty"`

	Spool *SpoolConfig `json:"spool,omitempty"`
	Retry *RetryConfig `json:"retry,omitempty"`
}

// FilterConfig selects records. Gap records always pass: a sink must learn
// that it (or the kernel) lost records even if it only wants denials.
type FilterConfig struct {
	// Kinds lists the record kinds to include (audit.Kinds); empty means
	// all kinds.
	Kinds []string `json:"kinds,omitempty"`
	// Verdicts lists the outcome verdicts to include (allowed, denied,
	// would_deny); empty means all. Records without an outcome (session
	// lifecycle) pass only when their kind is listed explicitly in Kinds.
	Verdicts []string `json:"verdicts,omitempty"`
	// DenialsOnly is shorthand for verdicts [denied, would_deny].
	DenialsOnly bool `json:"denials_only,omitempty"`
}

// FileConfig is a local file with size-based rotation
// (path, path.1, ... path.<max_files>).
type FileConfig struct {
	Path      string `json:"path"`
	MaxSizeMB int    `json:"max_size_mb,omitempty"`
	MaxFiles  int    `json:"max_files,omitempty"`
}

// SyslogConfig is RFC 5424 over TCP with octet-counting framing (RFC 6587),
// or over TLS (RFC 5425) when TLS is set.
type SyslogConfig struct {
	Address string `json:"address"` // host:port
	TLS     bool   `json:"tls,omitempty"`
	// CAFile verifies the server; empty uses the system roots.
	CAFile string `json:"ca_file,omitempty"`
	// CertFile and KeyFile present a client certificate (both or neither).
	CertFile   string `json:"cert_file,omitempty"`
	KeyFile    string `json:"key_file,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	AppName    string `json:"app_name,omitempty"`
	// Hostname overrides the HOSTNAME field; default is the record's host.
	Hostname string `json:"hostname,omitempty"`
	Facility *int   `json:"facility,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
}

// HECConfig is a Splunk HTTP Event Collector.
type HECConfig struct {
	// URL is the collector base (https://splunk:8088); the path
	// /services/collector/event is appended unless already present.
	URL string `json:"url"`
	// TokenFile holds the HEC token; it is read at start and never logged.
	TokenFile          string `json:"token_file"`
	BatchSize          int    `json:"batch_size,omitempty"`
	FlushInterval      string `json:"flush_interval,omitempty"`
	Gzip               bool   `json:"gzip,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
	CAFile             string `json:"ca_file,omitempty"`
	Index              string `json:"index,omitempty"`
	Source             string `json:"source,omitempty"`
	Sourcetype         string `json:"sourcetype,omitempty"`
	Timeout            string `json:"timeout,omitempty"`
}

// WebhookConfig POSTs batches as a JSON array.
type WebhookConfig struct {
	URL string `json:"url"`
	// Headers are sent verbatim; keep secrets out of them.
	Headers map[string]string `json:"headers,omitempty"`
	// HeaderFiles maps a header name to a file holding its value
	// (for example Authorization), read at start and never logged.
	HeaderFiles        map[string]string `json:"header_files,omitempty"`
	BatchSize          int               `json:"batch_size,omitempty"`
	FlushInterval      string            `json:"flush_interval,omitempty"`
	Gzip               bool              `json:"gzip,omitempty"`
	InsecureSkipVerify bool              `json:"insecure_skip_verify,omitempty"`
	CAFile             string            `json:"ca_file,omitempty"`
	Timeout            string            `json:"timeout,omitempty"`
}

// SpoolConfig bounds the on-disk queue in front of the sink.
type SpoolConfig struct {
	// Dir defaults to <pipeline state dir>/spool/<name>.
	Dir      string `json:"dir,omitempty"`
	MaxBytes int64  `json:"max_bytes,omitempty"`
}

// RetryConfig bounds the exponential backoff between delivery attempts.
type RetryConfig struct {
	InitialBackoff string `json:"initial_backoff,omitempty"`
	MaxBackoff     string `json:"max_backoff,omitempty"`
}

// FieldError is a config error that names the offending field by its path
// in the config file, e.g. "sinks[2].syslog.address".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

var sinkNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Validate checks one sink without touching the filesystem or network (the
// sink constructors report unreadable files). Field paths are relative to
// the sink ("syslog.address"); ValidateSinks prefixes them with "sinks[i]".
func (c SinkConfig) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if !sinkNameRE.MatchString(c.Name) {
		bad("name", "must match %s", sinkNameRE)
	}
	switch c.Format {
	case "", FormatJSON, FormatOCSF:
	default:
		bad("format", "unknown format %q (want json or ocsf)", c.Format)
	}
	if f := c.Filter; f != nil {
		for i, k := range f.Kinds {
			if !slices.Contains(Kinds, k) {
				bad(fmt.Sprintf("filter.kinds[%d]", i), "unknown kind %q", k)
			}
		}
		for i, v := range f.Verdicts {
			switch v {
			case VerdictAllowed, VerdictDenied, VerdictWouldDeny:
			default:
				bad(fmt.Sprintf("filter.verdicts[%d]", i), "unknown verdict %q", v)
			}
		}
		if f.DenialsOnly && len(f.Verdicts) > 0 {
			bad("filter.denials_only", "cannot be combined with filter.verdicts")
		}
	}

	// Exactly the block matching Type may be set, so a typo in type
	// cannot silently leave a configured destination unused.
	blocks := map[string]bool{
		SinkFile: c.File != nil, SinkSyslog: c.Syslog != nil,
		SinkHEC: c.HEC != nil, SinkWebhook: c.Webhook != nil,
	}
	for typ, set := range blocks {
		if set && typ != c.Type {
			bad(typ, "set but type is %q", c.Type)
		}
	}
	switch c.Type {
	case SinkStdout:
	case SinkFile:
		if c.File == nil {
			bad("file", "required for type file")
			break
		}
		if c.File.Path == "" {
			bad("file.path", "required")
		}
		if c.File.MaxSizeMB < 0 {
			bad("file.max_size_mb", "must not be negative")
		}
		if c.File.MaxFiles < 0 {
			bad("file.max_files", "must not be negative")
		}
	case SinkSyslog:
		s := c.Syslog
		if s == nil {
			bad("syslog", "required for type syslog")
			break
		}
		if err := checkHostPort(s.Address); err != nil {
			bad("syslog.address", "%v", err)
		}
		if (s.CertFile == "") != (s.KeyFile == "") {
			bad("syslog.cert_file", "cert_file and key_file must be set together")
		}
		if !s.TLS && (s.CAFile != "" || s.CertFile != "" || s.ServerName != "") {
			bad("syslog.tls", "must be true when ca_file, cert_file or server_name is set")
		}
		if s.Facility != nil && (*s.Facility < 0 || *s.Facility > 23) {
			bad("syslog.facility", "must be 0..23")
		}
		if len(s.AppName) > 48 {
			bad("syslog.app_name", "longer than 48 characters (RFC 5424)")
		}
		checkDuration(bad, "syslog.timeout", s.Timeout)
	case SinkHEC:
		h := c.HEC
		if h == nil {
			bad("hec", "required for type hec")
			break
		}
		checkURL(bad, "hec.url", h.URL)
		if h.TokenFile == "" {
			bad("hec.token_file", "required (the token is read from this file)")
		}
		checkHTTPCommon(bad, "hec", h.BatchSize, h.FlushInterval, h.Timeout, h.InsecureSkipVerify, h.CAFile)
	case SinkWebhook:
		w := c.Webhook
		if w == nil {
			bad("webhook", "required for type webhook")
			break
		}
		checkURL(bad, "webhook.url", w.URL)
		for name := range w.HeaderFiles {
			if _, dup := w.Headers[name]; dup {
				bad("webhook.header_files", "header %q also set in webhook.headers", name)
			}
		}
		checkHTTPCommon(bad, "webhook", w.BatchSize, w.FlushInterval, w.Timeout, w.InsecureSkipVerify, w.CAFile)
	case "":
		bad("type", "required (stdout, file, syslog, hec or webhook)")
	default:
		bad("type", "unknown type %q (want stdout, file, syslog, hec or webhook)", c.Type)
	}
	if c.Spool != nil && c.Spool.MaxBytes < 0 {
		bad("spool.max_bytes", "must not be negative")
	}
	if c.Spool != nil && c.Spool.MaxBytes > 0 && c.Spool.MaxBytes < 64<<10 {
		bad("spool.max_bytes", "must be at least 65536")
	}
	if r := c.Retry; r != nil {
		checkDuration(bad, "retry.initial_backoff", r.InitialBackoff)
		checkDuration(bad, "retry.max_backoff", r.MaxBackoff)
	}
	return errors.Join(errs...)
}

// ValidateSinks validates every sink, prefixing field paths with
// "sinks[i].", and rejects duplicate names (they share metrics and spools).
func ValidateSinks(sinks []SinkConfig) error {
	var errs []error
	seen := map[string]int{}
	for i, s := range sinks {
		prefix := fmt.Sprintf("sinks[%d]", i)
		if err := s.Validate(); err != nil {
			errs = append(errs, prefixErrors(prefix, err)...)
		}
		if j, dup := seen[s.Name]; dup && s.Name != "" {
			errs = append(errs, &FieldError{Field: prefix + ".name", Msg: fmt.Sprintf("duplicate of sinks[%d].name %q", j, s.Name)})
		}
		seen[s.Name] = i
	}
	return errors.Join(errs...)
}

func prefixErrors(prefix string, err error) []error {
	var out []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, prefixErrors(prefix, e)...)
		}
		return out
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []error{&FieldError{Field: prefix + "." + fe.Field, Msg: fe.Msg}}
	}
	return []error{fmt.Errorf("%s: %w", prefix, err)}
}

func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("required (host:port)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || port == "" {
		return fmt.Errorf("%q: want host:port", addr)
	}
	return nil
}

func checkURL(bad func(string, string, ...any), field, raw string) {
	if raw == "" {
		bad(field, "required")
		return
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse errors quote the input; the URL is not secret.
		bad(field, "%v", err)
		return
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		bad(field, "scheme must be http or https")
	}
	if u.Host == "" {
		bad(field, "missing host")
	}
	if u.User != nil {
		// Credentials in URLs end up in logs; require header_files/token_file.
		bad(field, "must not contain credentials")
	}
}

func checkHTTPCommon(bad func(string, string, ...any), prefix string, batch int, flush, timeout string, insecure bool, ca string) {
	if batch < 0 {
		bad(prefix+".batch_size", "must not be negative")
	}
	checkDuration(bad, prefix+".flush_interval", flush)
	checkDuration(bad, prefix+".timeout", timeout)
	if insecure && ca != "" {
		bad(prefix+".insecure_skip_verify", "contradicts ca_file")
	}
}

func checkDuration(bad func(string, string, ...any), field, s string) {
	if s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		bad(field, "%q is not a duration (e.g. \"5s\")", s)
		return
	}
	if d <= 0 {
		bad(field, "must be positive")
	}
}

// DurationOr parses a validated duration string, falling back to def.
func DurationOr(s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return def
	}
	return d
}

// EffectiveFormat returns the configured format, defaulting to json.
func (c SinkConfig) EffectiveFormat() string {
	if c.Format == "" {
		return FormatJSON
	}
	return strings.ToLower(c.Format)
}
