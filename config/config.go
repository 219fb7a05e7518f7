// Package config is the agentfenced configuration file: its schema, its
// defaults, strict YAML parsing and validation, and command-line overrides.
//
// The file is YAML with lower_snake keys (see docs/config.md). Parsing is
// strict: an unknown or duplicated key is an error that names the key, so a
// typo never silently falls back to a default. Keys that are absent keep
// their defaults.
//
// The usual sequence in the daemon is
//
//	fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
//	flags := config.BindFlags(fs)
//	_ = fs.Parse(os.Args[1:])
//	cfg, err := flags.Load() // --config file (or defaults) + set flags, validated
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/agentfence/agentfence/audit"
)

// Defaults. They are also documented in docs/config.md; keep both in step.
const (
	DefaultAPISocket   = "/run/agentfence/api.sock"
	DefaultMetricsAddr = "127.0.0.1:9090"
	DefaultBPFFSPath   = "/sys/fs/bpf/agentfence"
	DefaultStateDir    = "/var/lib/agentfence"
	DefaultAuditFile   = "-"
	DefaultPath        = "/etc/agentfence/agentfence.yaml"

	// APISocketMode is the fixed permission of the API socket. It is not
	// configurable: who may talk to the daemon is decided by authz (peer
	// credentials), and a world-writable socket would only widen the attack
	// surface of the authorization code.
	APISocketMode os.FileMode = 0o600

	// MaxSessionsLimit is how many sessions the kernel session maps hold:
	// their capacity (AF_MAX_SESSIONS in bpf/common.h) less slot 0, which
	// no session uses so that a zeroed binding names none. A constant so
	// that validation needs no BPF object; enforcer's TestSessionCapacity
	// keeps it in step with the maps.
	MaxSessionsLimit = 16383

	// MaxAncestryDepth bounds process.ancestry_depth (the walk is a bounded
	// loop in the BPF programs).
	MaxAncestryDepth = 32
)

// Audit formats.
const (
	FormatJSON = "json"
	FormatOCSF = "ocsf"
)

// DriftAction is what happens to a session whose violation budget is spent.
type DriftAction string

// Drift actions.
const (
	// DriftQuarantine narrows the session to its essential rules.
	DriftQuarantine DriftAction = "quarantine"
	// DriftKill kills the session's members.
	DriftKill DriftAction = "kill"
	// DriftNone only records the violations.
	DriftNone DriftAction = "none"
)

// Config is the whole agentfenced configuration file.
type Config struct {
	// APISocket is the unix socket the HTTP+JSON API listens on. Its mode is
	// always APISocketMode.
	APISocket string `json:"api_socket"`
	// MetricsAddr is host:port of the Prometheus /metrics, /healthz and
	// /readyz listener; "" disables it.
	MetricsAddr string `json:"metrics_addr"`
	// BPFFSPath is the directory under a bpffs mount where programs, links
	// and maps are pinned so that a restarted daemon adopts them.
	BPFFSPath string `json:"bpffs_path"`
	// CgroupRoot is the cgroup v2 mount; "" finds it in /proc/self/mountinfo.
	CgroupRoot string `json:"cgroup_root"`
	// StateDir holds the audit spool and other state that outlives a restart.
	StateDir string `json:"state_dir"`

	Audit    Audit    `json:"audit"`
	Sessions Sessions `json:"sessions"`
	Authz    Authz    `json:"authz"`
	DNS      DNS      `json:"dns"`
	Process  Process  `json:"process"`
	// Credentials are the names and patterns, besides the built-in ones
	// (docs/audit.md, "Credentials"), whose values are replaced by their
	// fingerprint wherever a command line is recorded.
	Credentials Credentials `json:"credentials"`
	// TLS is the reading of members' HTTPS calls at their TLS library
	// (docs/audit.md, "HTTP calls").
	TLS TLS `json:"tls"`
	// Kubernetes is following the cluster's agentfence.io objects
	// (docs/kubernetes.md).
	Kubernetes Kubernetes `json:"kubernetes"`
}

// Kubernetes settings.
type Kubernetes struct {
	// Enabled makes the daemon follow the Agents and AgentSessions of the
	// cluster for the pods of its node (the DaemonSet's config does).
	Enabled bool `json:"enabled"`
	// NodeName is this node's name; "" reads $NODE_NAME, which the
	// DaemonSet sets from the downward API.
	NodeName string `json:"node_name"`
	// Kubeconfig is a kubeconfig file; "" uses the pod's service account.
	Kubeconfig string `json:"kubeconfig"`
	// PodCgroups are the cgroups, relative to the cgroup v2 root, that
	// the kubelet makes pod cgroups in. Every pod cgroup made in one of
	// them is held at deny from its first moment until this node has
	// classified the pod (docs/kubernetes.md); those that do not exist
	// are skipped. The default names the QoS cgroups of both cgroup
	// drivers; [] holds nothing, and an Agent's pod then runs unconfined
	// until its session is bound.
	PodCgroups []string `json:"pod_cgroups"`
	// HoldControlPlane holds new pods on control-plane nodes too (the
	// node-role.kubernetes.io/control-plane label). Off by default: the
	// control plane's static pods would wait for an API server that may be
	// one of them.
	HoldControlPlane bool `json:"hold_control_plane"`
	// RecordLabels are the pod label keys that audit records of a pod
	// carry, besides its name, namespace, service account and node.
	RecordLabels []string `json:"record_labels"`
	// IgnoreNamespaces are namespaces whose Agents and AgentSessions the
	// node does not follow: their pods are never held or bound, and an
	// object there that selects a pod of the node gets a warning event.
	// The daemon's own namespace ($POD_NAMESPACE) is always among them.
	IgnoreNamespaces []string `json:"ignore_namespaces"`
}

// DefaultIgnoreNamespaces are the cluster's own namespaces: an Agent
// there could hold or confine the cluster's DNS, or the API server.
var DefaultIgnoreNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// DefaultRecordLabels are the label keys records carry by default: the
// names Kubernetes recommends for an application.
var DefaultRecordLabels = []string{"app", "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

// DefaultPodCgroups are the kubelet's QoS cgroups: cgroupfs driver, then
// systemd driver.
var DefaultPodCgroups = []string{
	"kubepods", "kubepods/burstable", "kubepods/besteffort",
	"kubepods.slice", "kubepods.slice/kubepods-burstable.slice", "kubepods.slice/kubepods-besteffort.slice",
}

// TLS probe settings.
type TLS struct {
	// Probes is TLSProbesAuto (attach the probes while sessions exist) or
	// TLSProbesOff.
	Probes string `json:"probes"`
	// Query is TLSQueryDrop (records carry a call's path without its
	// query string) or TLSQueryHash (and the query's keyed hash).
	Query string `json:"query"`
	// CredentialHeaders are header names, besides Authorization,
	// x-api-key and api-key, whose value is an API key.
	CredentialHeaders []string `json:"credential_headers,omitempty"`
	// Processes are executables (absolute paths, at most
	// MaxTLSProcesses) whose processes outside sessions have their calls
	// read too, as http records without a session: a shared MCP server
	// or another holder of a credential on the node. With any, the probes
	// stay attached while no session is open.
	Processes []string `json:"processes,omitempty"`
}

// MaxTLSProcesses bounds tls.processes (the probes' map of them,
// bpf/tls.c).
const MaxTLSProcesses = 64

// TLS probe modes and query handling.
const (
	TLSProbesAuto = "auto"
	TLSProbesOff  = "off"
	TLSQueryDrop  = "drop"
	TLSQueryHash  = "hash"
)

// Credentials extends credential redaction.
type Credentials struct {
	// RedactNames are header, parameter, flag and variable names whose
	// value is a credential (compared without case; '-' and '.' count as
	// '_').
	RedactNames []string `json:"redact_names,omitempty"`
	// RedactPatterns are Go regular expressions; every match is redacted.
	RedactPatterns []string `json:"redact_patterns,omitempty"`
	// Holders are credentials registered by fingerprint with the
	// executables allowed to send them (an MCP server): any other process
	// that sends one is flagged (docs/audit.md, "Credential holders").
	Holders []Holder `json:"holders,omitempty"`
}

// Holder is a credential and who may use it.
type Holder struct {
	// Name names the credential in records (credential.holder).
	Name string `json:"name"`
	// Fingerprint is the credential's fingerprint on this node, as
	// `agentfence credential fingerprint` prints it.
	Fingerprint string `json:"fingerprint"`
	// Executables are the files that may send it.
	Executables []HolderExe `json:"executables"`
}

// HolderExe is an executable by path and, optionally, content.
type HolderExe struct {
	Path string `json:"path"`
	// SHA256, when set, must be the file's hash too (hex).
	SHA256 string `json:"sha256,omitempty"`
}

// Audit selects where audit records go.
type Audit struct {
	// File is "-" for standard output or an absolute path.
	File string `json:"file"`
	// Format is FormatJSON or FormatOCSF.
	Format string `json:"format"`
	// Sinks are additional destinations; see docs/audit.md.
	Sinks []audit.SinkConfig `json:"sinks,omitempty"`
	// AggregateWindow is how long the kernel counts repeats of an allowed
	// connect or send (same session, process, destination, protocol and
	// rule) before they become one record with their count; the first of
	// a window is recorded at once. 0 records every decision.
	AggregateWindow Duration `json:"aggregate_window"`
}

// MaxAggregateWindow bounds audit.aggregate_window: repeats wait up to a
// window before they are recorded.
const MaxAggregateWindow = Duration(time.Minute)

// Sessions bounds intent sessions.
type Sessions struct {
	// MaxTTL is the longest lifetime a caller may ask for.
	MaxTTL Duration `json:"max_ttl"`
	// DefaultTTL is the lifetime of a session that asks for none.
	DefaultTTL Duration `json:"default_ttl"`
	// ViolationBudget is how many out-of-scope attempts a session may make
	// before DriftAction is applied; 0 applies it on the first one.
	ViolationBudget int `json:"violation_budget"`
	// DriftAction is DriftQuarantine, DriftKill or DriftNone.
	DriftAction DriftAction `json:"drift_action"`
	// MaxSessions is the number of sessions open at once (1..MaxSessionsLimit).
	MaxSessions int `json:"max_sessions"`
}

// Authz says who may open sessions.
type Authz struct {
	// UIDs, GIDs and Exes admit callers on the unix socket by peer
	// credentials (SO_PEERCRED and /proc/<pid>/exe). A caller matching any
	// one list is admitted.
	UIDs []uint32 `json:"uids"`
	GIDs []uint32 `json:"gids"`
	Exes []string `json:"exes"`
	// SPIFFE admits remote callers over mTLS by SPIFFE ID.
	SPIFFE SPIFFE `json:"spiffe"`
}

// SPIFFE configures the optional mTLS listener. It is off while ListenAddr
// is "".
type SPIFFE struct {
	ListenAddr  string   `json:"listen_addr"`
	TrustDomain string   `json:"trust_domain"`
	AllowedIDs  []string `json:"allowed_ids"`
	SVID        SVID     `json:"svid"`
}

// SVID says where the daemon's own X.509 SVID comes from: either the SPIFFE
// Workload API or three files.
type SVID struct {
	WorkloadAPISocket string `json:"workload_api_socket"`
	CertFile          string `json:"cert_file"`
	KeyFile           string `json:"key_file"`
	BundleFile        string `json:"bundle_file"`
}

// DNS clamps the TTLs of learned name→address bindings.
type DNS struct {
	MinTTL Duration `json:"min_ttl"`
	MaxTTL Duration `json:"max_ttl"`
}

// Process tunes process tracking.
type Process struct {
	// AncestryDepth is how many ancestors are walked to attribute a process.
	AncestryDepth int `json:"ancestry_depth"`
	// CacheSize is the number of processes kept in the user-space cache.
	CacheSize int `json:"cache_size"`
	// ExitGrace is how long an exited process stays attributable (late
	// events of a short-lived process still find their session).
	ExitGrace Duration `json:"exit_grace"`
}

// Default returns the built-in configuration, the one in force for every key
// the file leaves out.
func Default() Config {
	return Config{
		APISocket:   DefaultAPISocket,
		MetricsAddr: DefaultMetricsAddr,
		BPFFSPath:   DefaultBPFFSPath,
		CgroupRoot:  "",
		StateDir:    DefaultStateDir,
		Audit: Audit{
			File:            DefaultAuditFile,
			Format:          FormatJSON,
			AggregateWindow: Duration(time.Second),
		},
		Sessions: Sessions{
			MaxTTL:          Duration(24 * time.Hour),
			DefaultTTL:      Duration(time.Hour),
			ViolationBudget: 100,
			DriftAction:     DriftQuarantine,
			MaxSessions:     4096,
		},
		Authz: Authz{
			UIDs: []uint32{0},
			GIDs: []uint32{},
			Exes: []string{},
			SPIFFE: SPIFFE{
				AllowedIDs: []string{},
			},
		},
		DNS: DNS{
			MinTTL: Duration(5 * time.Second),
			MaxTTL: Duration(time.Hour),
		},
		TLS: TLS{Probes: TLSProbesAuto, Query: TLSQueryDrop},
		Kubernetes: Kubernetes{PodCgroups: slices.Clone(DefaultPodCgroups), RecordLabels: slices.Clone(DefaultRecordLabels),
			IgnoreNamespaces: slices.Clone(DefaultIgnoreNamespaces)},
		Process: Process{
			AncestryDepth: 8,
			CacheSize:     65536,
			ExitGrace:     Duration(30 * time.Second),
		},
	}
}

// Load reads and parses the file at path (see Parse).
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML over Default() and validates the result. Unknown and
// duplicated keys are errors naming the key; a value of the wrong type is an
// error naming the field and the value. An empty document yields Default().
func Parse(data []byte) (Config, error) {
	c, err := decode(data)
	if err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// decode is Parse without Validate.
func decode(data []byte) (Config, error) {
	c := Default()
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, decodeError(data, err)
	}
	// encoding/json matches keys case-insensitively; the file's keys are
	// case-sensitive, so "API_Socket" is an unknown key, not api_socket.
	if path := unknownKeyPath(data); path != "" {
		return Config{}, fmt.Errorf("config: unknown key %q (keys are lower_snake and case-sensitive)", path)
	}
	return c, nil
}

// Marshal renders c as YAML that Parse reads back to an equal Config.
func (c Config) Marshal() ([]byte, error) {
	return yaml.Marshal(c)
}

// decodeError rewrites the decoder's errors into "config: field: problem".
func decodeError(data []byte, err error) error {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		field := ute.Field
		if field == "" {
			field = "(document)"
		}
		return fmt.Errorf("config: %s: want %s, got %s", field, typeName(ute.Type), ute.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("config: syntax error: %w", se)
	}
	msg := err.Error()
	if i := strings.Index(msg, `unknown field "`); i >= 0 {
		key, _, _ := strings.Cut(msg[i+len(`unknown field "`):], `"`)
		if path := unknownKeyPath(data); path != "" {
			return fmt.Errorf("config: unknown key %q", path)
		}
		return fmt.Errorf("config: unknown key %q", key)
	}
	// YAML syntax errors and duplicate keys come from the YAML layer; strip
	// the library's wrapping but keep its text (it names line and key).
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: ")
	msg = strings.TrimPrefix(msg, "while decoding JSON: ")
	return fmt.Errorf("config: %s", msg)
}

func typeName(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	switch {
	case t == durationType:
		return `a duration string such as "30s", "5m" or "24h"`
	case t.Kind() == reflect.Uint32:
		return "an integer between 0 and 4294967295"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "an integer"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Slice:
		return "a list"
	case t.Kind() == reflect.Struct, t.Kind() == reflect.Map:
		return "a mapping"
	}
	return t.String()
}

// unknownKeyPath returns the dotted path ("sessions.max_tll",
// "audit.sinks[0].tpye") of the first key in data, in sorted order, that
// matches no field of Config exactly. It returns "" when every key matches or
// data is not valid YAML.
func unknownKeyPath(data []byte) string {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return ""
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if dec.Decode(&doc) != nil {
		return ""
	}
	return findUnknown(doc, reflect.TypeFor[Config](), "")
}

func findUnknown(v any, t reflect.Type, prefix string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return ""
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			ft, ok := fields[k]
			if !ok {
				return p
			}
			if r := findUnknown(m[k], ft, p); r != "" {
				return r
			}
		}
	case reflect.Slice, reflect.Array:
		a, ok := v.([]any)
		if !ok {
			return ""
		}
		for i, e := range a {
			if r := findUnknown(e, t.Elem(), prefix+"["+strconv.Itoa(i)+"]"); r != "" {
				return r
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if r := findUnknown(m[k], t.Elem(), prefix+"."+k); r != "" {
				return r
			}
		}
	}
	return ""
}

// jsonFields maps the JSON names of t's fields (embedded structs flattened)
// to their types, matching encoding/json's rules for tagged fields.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, dup := out[k]; !dup {
						out[k] = v
					}
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
