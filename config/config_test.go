package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
)

func TestDefaults(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() does not validate: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"api_socket", c.APISocket, "/run/agentfence/api.sock"},
		{"metrics_addr", c.MetricsAddr, "127.0.0.1:9090"},
		{"bpffs_path", c.BPFFSPath, "/sys/fs/bpf/agentfence"},
		{"cgroup_root", c.CgroupRoot, ""},
		{"state_dir", c.StateDir, "/var/lib/agentfence"},
		{"audit.file", c.Audit.File, "-"},
		{"audit.format", c.Audit.Format, "json"},
		{"sessions.max_ttl", c.Sessions.MaxTTL.Std(), 24 * time.Hour},
		{"sessions.default_ttl", c.Sessions.DefaultTTL.Std(), time.Hour},
		{"sessions.violation_budget", c.Sessions.ViolationBudget, 100},
		{"sessions.drift_action", c.Sessions.DriftAction, DriftQuarantine},
		{"authz.uids", c.Authz.UIDs, []uint32{0}},
		{"dns.min_ttl", c.DNS.MinTTL.Std(), 5 * time.Second},
		{"dns.max_ttl", c.DNS.MaxTTL.Std(), time.Hour},
		{"process.ancestry_depth", c.Process.AncestryDepth, 8},
		{"process.cache_size", c.Process.CacheSize, 65536},
		{"process.exit_grace", c.Process.ExitGrace.Std(), 30 * time.Second},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("default %s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	// Default() must hand out fresh slices: mutating one copy must not
	// change the next.
	c.Authz.UIDs[0] = 42
	if Default().Authz.UIDs[0] != 0 {
		t.Error("Default() shares its uids slice between calls")
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "\n", "# only a comment\n", "---\n", "null\n", "{}\n"} {
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("Parse(%q) = %+v, want Default()", doc, c)
		}
	}
}

func TestParsePartialKeepsDefaults(t *testing.T) {
	c, err := Parse([]byte("sessions:\n  default_ttl: 10m\nmetrics_addr: \"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Sessions.DefaultTTL.Std() != 10*time.Minute {
		t.Errorf("default_ttl = %v", c.Sessions.DefaultTTL)
	}
	if c.Sessions.MaxTTL.Std() != 24*time.Hour {
		t.Errorf("max_ttl lost its default: %v", c.Sessions.MaxTTL)
	}
	if c.MetricsAddr != "" {
		t.Errorf(`metrics_addr "" must disable metrics, got %q`, c.MetricsAddr)
	}
	if c.APISocket != DefaultAPISocket {
		t.Errorf("api_socket lost its default: %q", c.APISocket)
	}
}

const fullConfig = `
api_socket: /run/af/api.sock
metrics_addr: "0.0.0.0:9100"
bpffs_path: /sys/fs/bpf/af
cgroup_root: /sys/fs/cgroup/unified
state_dir: /var/lib/af
audit:
  file: /var/log/agentfence/audit.jsonl
  format: ocsf
  aggregate_window: 500ms
  sinks:
    - name: siem
      type: syslog
      format: ocsf
      filter:
        denials_only: true
      syslog:
        address: siem.example.org:6514
        tls: true
        ca_file: /etc/agentfence/siem-ca.pem
    - name: local
      type: file
      file:
        path: /var/log/agentfence/denials.jsonl
        max_size_mb: 50
sessions:
  max_ttl: 12h
  default_ttl: 30m
  violation_budget: 0
  drift_action: kill
  max_sessions: 16383
authz:
  uids: [0, 1000]
  gids: [998]
  exes: [/usr/local/bin/agent-launcher]
  spiffe:
    listen_addr: "0.0.0.0:8443"
    trust_domain: example.org
    allowed_ids: ["spiffe://example.org/ns/ci/sa/runner"]
    svid:
      workload_api_socket: unix:///run/spire/sockets/agent.sock
dns:
  min_ttl: 0s
  max_ttl: 10m
process:
  ancestry_depth: 16
  cache_size: 1024
  exit_grace: 1m
tls:
  probes: "off"
  query: hash
  credential_headers: [x-goog-api-key]
  processes: [/bin/sh]
kubernetes:
  enabled: true
  node_name: node-a
  pod_cgroups: [kubepods.slice/kubepods-burstable.slice]
  hold_control_plane: true
  record_labels: [team]
  ignore_namespaces: [platform]
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		APISocket:   "/run/af/api.sock",
		MetricsAddr: "0.0.0.0:9100",
		BPFFSPath:   "/sys/fs/bpf/af",
		CgroupRoot:  "/sys/fs/cgroup/unified",
		StateDir:    "/var/lib/af",
		Audit: Audit{
			File:            "/var/log/agentfence/audit.jsonl",
			Format:          "ocsf",
			AggregateWindow: Duration(500 * time.Millisecond),
			Sinks: []audit.SinkConfig{
				{Name: "siem", Type: "syslog", Format: "ocsf",
					Filter: &audit.FilterConfig{DenialsOnly: true},
					Syslog: &audit.SyslogConfig{Address: "siem.example.org:6514", TLS: true, CAFile: "/etc/agentfence/siem-ca.pem"}},
				{Name: "local", Type: "file",
					File: &audit.FileConfig{Path: "/var/log/agentfence/denials.jsonl", MaxSizeMB: 50}},
			},
		},
		Sessions: Sessions{
			MaxTTL: Duration(12 * time.Hour), DefaultTTL: Duration(30 * time.Minute),
			ViolationBudget: 0, DriftAction: "kill", MaxSessions: 16383,
		},
		Authz: Authz{
			UIDs: []uint32{0, 1000}, GIDs: []uint32{998}, Exes: []string{"/usr/local/bin/agent-launcher"},
			SPIFFE: SPIFFE{
				ListenAddr: "0.0.0.0:8443", TrustDomain: "example.org",
				AllowedIDs: []string{"spiffe://example.org/ns/ci/sa/runner"},
				SVID:       SVID{WorkloadAPISocket: "unix:///run/spire/sockets/agent.sock"},
			},
		},
		DNS:     DNS{MinTTL: 0, MaxTTL: Duration(10 * time.Minute)},
		Process: Process{AncestryDepth: 16, CacheSize: 1024, ExitGrace: Duration(time.Minute)},
		TLS:     TLS{Probes: TLSProbesOff, Query: TLSQueryHash, CredentialHeaders: []string{"x-goog-api-key"}, Processes: []string{"/bin/sh"}},
		Kubernetes: Kubernetes{Enabled: true, NodeName: "node-a", PodCgroups: []string{"kubepods.slice/kubepods-burstable.slice"},
			HoldControlPlane: true, RecordLabels: []string{"team"}, IgnoreNamespaces: []string{"platform"}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse(full):\n got %+v\nwant %+v", c, want)
	}
}

func TestRoundTrip(t *testing.T) {
	for name, doc := range map[string]string{"default": "", "full": fullConfig} {
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("%s: Marshal: %v", name, err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("%s: Parse(Marshal()) = %v\n%s", name, err, out)
		}
		if !reflect.DeepEqual(back, c) {
			t.Errorf("%s: round trip changed the config:\n got %+v\nwant %+v\nyaml:\n%s", name, back, c, out)
		}
		if !strings.Contains(string(out), "max_ttl: ") || strings.Contains(string(out), "MaxTTL") {
			t.Errorf("%s: Marshal does not use the file's key names:\n%s", name, out)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []string // every substring must appear in the error
	}{
		{"unknown top-level key", "api_sockt: /x.sock\n", []string{`unknown key "api_sockt"`}},
		{"unknown nested key", "sessions:\n  max_tll: 1h\n", []string{`unknown key "sessions.max_tll"`}},
		{"unknown key in sink", "audit:\n  sinks:\n    - name: a\n      type: stdout\n      tpye: x\n", []string{`unknown key "audit.sinks[0].tpye"`}},
		{"wrong case key", "API_Socket: /x.sock\n", []string{`unknown key "API_Socket"`}},
		{"socket mode is not configurable", "api_socket_mode: \"0666\"\n", []string{`unknown key "api_socket_mode"`}},
		{"duplicate key", "state_dir: /a\nstate_dir: /b\n", []string{"state_dir", "already set"}},
		{"yaml syntax", "sessions: [\n", []string{"config:"}},
		{"not a mapping", "- a\n- b\n", []string{"config:", "array"}},
		{"bad duration", "sessions:\n  max_ttl: 3 days\n", []string{"sessions.max_ttl", `"3 days"`, "duration"}},
		{"bare number duration", "dns:\n  min_ttl: 30\n", []string{"dns.min_ttl", "30", "duration"}},
		{"negative uid", "authz:\n  uids: [-1]\n", []string{"authz.uids", "-1"}},
		{"string for int", "sessions:\n  max_sessions: many\n", []string{"sessions.max_sessions", "string"}},
		{"negative ttl", "sessions:\n  default_ttl: -5m\n", []string{"sessions.default_ttl", "must be positive", `"-5m0s"`}},
		{"zero max ttl", "sessions:\n  max_ttl: 0s\n", []string{"sessions.max_ttl", "must be positive"}},
		{"default over max", "sessions:\n  max_ttl: 1h\n  default_ttl: 2h\n", []string{"sessions.default_ttl", "must not exceed sessions.max_ttl", `"2h0m0s"`}},
		{"negative budget", "sessions:\n  violation_budget: -1\n", []string{"sessions.violation_budget", "-1"}},
		{"bad drift action", "sessions:\n  drift_action: explode\n", []string{"sessions.drift_action", `"explode"`}},
		{"max sessions over map", "sessions:\n  max_sessions: 20000\n", []string{"sessions.max_sessions", "20000", "16383"}},
		{"max sessions zero", "sessions:\n  max_sessions: 0\n", []string{"sessions.max_sessions", "got 0"}},
		{"bad audit format", "audit:\n  format: xml\n", []string{"audit.format", `"xml"`}},
		{"relative audit file", "audit:\n  file: audit.log\n", []string{"audit.file", `"audit.log"`}},
		{"negative aggregate window", "audit:\n  aggregate_window: -1s\n", []string{"audit.aggregate_window", `"-1s"`, "0 (off) or more"}},
		{"aggregate window over the cap", "audit:\n  aggregate_window: 2m\n", []string{"audit.aggregate_window", "must not exceed 1m0s"}},
		{"aggregate window over the default ttl", "audit:\n  aggregate_window: 30s\nsessions:\n  default_ttl: 10s\n", []string{"audit.aggregate_window", "sessions.default_ttl (10s)"}},
		{"bad sink", "audit:\n  sinks:\n    - name: s\n      type: carrier-pigeon\n", []string{"audit.sinks[0].type", "carrier-pigeon"}},
		{"duplicate sink names", "audit:\n  sinks:\n    - {name: s, type: stdout}\n    - {name: s, type: stdout}\n", []string{"audit.sinks[1].name", "duplicate"}},
		{"metrics addr no port", "metrics_addr: localhost\n", []string{"metrics_addr", `"localhost"`}},
		{"metrics addr bad port", "metrics_addr: \"127.0.0.1:http\"\n", []string{"metrics_addr", "port"}},
		{"metrics addr port too big", "metrics_addr: \"127.0.0.1:70000\"\n", []string{"metrics_addr", "port"}},
		{"metrics addr port too big", "metrics_addr: \"127.0.0.1:70000\"\n", []string{"metrics_addr", "port"}},
		{"relative socket", "api_socket: run/api.sock\n", []string{"api_socket", "absolute", `"run/api.sock"`}},
		{"empty socket", "api_socket: \"\"\n", []string{"api_socket", "absolute"}},
		{"socket too long", "api_socket: /" + strings.Repeat("a", 120) + "\n", []string{"api_socket", "longer than a unix socket path"}},
		{"relative bpffs", "bpffs_path: bpf\n", []string{"bpffs_path", `"bpf"`}},
		{"bpffs root", "bpffs_path: /\n", []string{"bpffs_path", "not /"}},
		{"relative cgroup root", "cgroup_root: sys/fs/cgroup\n", []string{"cgroup_root", "absolute"}},
		{"relative state dir", "state_dir: state\n", []string{"state_dir", "absolute"}},
		{"relative exe", "authz:\n  exes: [agent]\n", []string{"authz.exes[0]", `"agent"`}},
		{"nobody admitted", "authz:\n  uids: []\n", []string{"authz", "admits no caller"}},
		{"spiffe no trust domain", "authz:\n  spiffe:\n    listen_addr: \":8443\"\n    allowed_ids: [\"spiffe://x/y\"]\n    svid: {workload_api_socket: /run/spire.sock}\n", []string{"authz.spiffe.trust_domain"}},
		{"spiffe bad id", "authz:\n  spiffe:\n    listen_addr: \":8443\"\n    trust_domain: example.org\n    allowed_ids: [\"example.org/x\"]\n    svid: {workload_api_socket: /run/spire.sock}\n", []string{"authz.spiffe.allowed_ids[0]", `"example.org/x"`}},
		{"spiffe no svid", "authz:\n  spiffe:\n    listen_addr: \":8443\"\n    trust_domain: example.org\n    allowed_ids: [\"spiffe://example.org/x\"]\n", []string{"authz.spiffe.svid", "needs"}},
		{"spiffe both svid sources", "authz:\n  spiffe:\n    listen_addr: \":8443\"\n    trust_domain: example.org\n    allowed_ids: [\"spiffe://example.org/x\"]\n    svid: {workload_api_socket: /a.sock, cert_file: /c.pem}\n", []string{"authz.spiffe.svid", "not both"}},
		{"spiffe partial files", "authz:\n  spiffe:\n    listen_addr: \":8443\"\n    trust_domain: example.org\n    allowed_ids: [\"spiffe://example.org/x\"]\n    svid: {cert_file: /c.pem}\n", []string{"authz.spiffe.svid.key_file", "authz.spiffe.svid.bundle_file"}},
		{"spiffe bad listen", "authz:\n  spiffe:\n    listen_addr: \"8443\"\n    trust_domain: example.org\n    allowed_ids: [\"spiffe://example.org/x\"]\n    svid: {workload_api_socket: /a.sock}\n", []string{"authz.spiffe.listen_addr", `"8443"`}},
		{"dns min over max", "dns:\n  min_ttl: 2h\n", []string{"dns.min_ttl", "must not exceed dns.max_ttl"}},
		{"dns negative min", "dns:\n  min_ttl: -1s\n", []string{"dns.min_ttl", "negative"}},
		{"ancestry depth zero", "process:\n  ancestry_depth: 0\n", []string{"process.ancestry_depth", "got 0"}},
		{"ancestry depth huge", "process:\n  ancestry_depth: 1000\n", []string{"process.ancestry_depth", "1000"}},
		{"cache size zero", "process:\n  cache_size: 0\n", []string{"process.cache_size"}},
		{"negative exit grace", "process:\n  exit_grace: -1s\n", []string{"process.exit_grace", `"-1s"`}},
		{"empty redact name", "credentials:\n  redact_names: [\"x\", \" \"]\n", []string{"credentials.redact_names[1]", "empty"}},
		{"bad redact pattern", "credentials:\n  redact_patterns: [\"(\"]\n", []string{"credentials.redact_patterns[0]", "regular expression"}},
		{"empty-matching pattern", "credentials:\n  redact_patterns: [\"x*\"]\n", []string{"credentials.redact_patterns[0]", "empty string"}},
		{"holder without executables", "credentials:\n  holders: [{name: a, fingerprint: 0123456789abcdef}]\n", []string{"credentials.holders[0].executables", "must list"}},
		{"holder bad fingerprint", "credentials:\n  holders: [{name: a, fingerprint: 0123XYZ, executables: [{path: /bin/sh}]}]\n", []string{"credentials.holders[0].fingerprint", "16 lowercase hex"}},
		{"holder missing exe", "credentials:\n  holders: [{name: a, fingerprint: 0123456789abcdef, executables: [{path: /nonexistent/mcp}]}]\n", []string{"credentials.holders[0].executables[0].path", "existing file"}},
		{"holder relative exe", "credentials:\n  holders: [{name: a, fingerprint: 0123456789abcdef, executables: [{path: bin/mcp}]}]\n", []string{"credentials.holders[0].executables[0].path", "absolute"}},
		{"holder bad sha256", "credentials:\n  holders: [{name: a, fingerprint: 0123456789abcdef, executables: [{path: /bin/sh, sha256: abc}]}]\n", []string{"credentials.holders[0].executables[0].sha256", "64 lowercase hex"}},
		{"holders twice", "credentials:\n  holders: [{name: a, fingerprint: 0123456789abcdef, executables: [{path: /bin/sh}]}, {name: a, fingerprint: 0123456789abcdef, executables: [{path: /bin/sh}]}]\n", []string{"credentials.holders[1].name", "credentials.holders[1].fingerprint"}},
		{"bad tls probes", "tls:\n  probes: always\n", []string{"tls.probes", "auto"}},
		{"bad tls query", "tls:\n  query: keep\n", []string{"tls.query", "hash"}},
		{"bad credential header", "tls:\n  credential_headers: [\"x key\"]\n", []string{"tls.credential_headers[0]", "header name"}},
		{"relative tls process", "tls:\n  processes: [bin/mcp]\n", []string{"tls.processes[0]", "absolute"}},
		{"unclean tls process", "tls:\n  processes: [/bin/../bin/sh]\n", []string{"tls.processes[0]", "clean"}},
		{"missing tls process", "tls:\n  processes: [/bin/sh, /nonexistent/mcp]\n", []string{"tls.processes[1]", "existing file"}},
		{"tls process twice", "tls:\n  processes: [/bin/sh, /bin/sh]\n", []string{"tls.processes[1]", "twice"}},
		{"too many tls processes", "tls:\n  processes: [" + strings.Repeat("/bin/sh, ", MaxTLSProcesses) + "/bin/sh]\n", []string{"tls.processes", "at most 64"}},
		{"pod cgroup outside the root", "kubernetes:\n  pod_cgroups: [../kubepods]\n", []string{"kubernetes.pod_cgroups[0]", "relative"}},
		{"absolute pod cgroup", "kubernetes:\n  pod_cgroups: [kubepods, /sys/fs/cgroup/kubepods]\n", []string{"kubernetes.pod_cgroups[1]", "relative"}},
		{"unclean pod cgroup", "kubernetes:\n  pod_cgroups: [kubepods//burstable]\n", []string{"kubernetes.pod_cgroups[0]", "relative"}},
		{"bad record label", "kubernetes:\n  record_labels: [app, \"a b\"]\n", []string{"kubernetes.record_labels[1]", "label key"}},
		{"bad ignored namespace", "kubernetes:\n  ignore_namespaces: [kube-system, Team_A]\n", []string{"kubernetes.ignore_namespaces[1]", "namespace name"}},
		{"several problems at once", "audit:\n  format: xml\nsessions:\n  drift_action: x\n", []string{"audit.format", "sessions.drift_action"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.doc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "error unmarshaling JSON") || strings.Contains(err.Error(), "Go struct field") {
				t.Errorf("error leaks decoder internals: %q", err)
			}
		})
	}
}

func TestValidateFieldErrors(t *testing.T) {
	c := Default()
	c.Audit.Format = "xml"
	err := c.Validate()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("Validate error %v is not a *FieldError", err)
	}
	if fe.Field != "audit.format" || fe.Value != "xml" {
		t.Errorf("FieldError = %+v", fe)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agentfence.yaml")
	if err := os.WriteFile(p, []byte("audit:\n  format: ocsf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil || c.Audit.Format != "ocsf" {
		t.Fatalf("Load = %+v, %v", c.Audit, err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v, want an error naming the file", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Load(bad) = %v, want an error naming the file and the key", err)
	}
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agentfence.yaml")
	file := "api_socket: /run/file.sock\nmetrics_addr: \"127.0.0.1:9999\"\nstate_dir: /var/lib/file\naudit:\n  format: json\n  file: /var/log/file.jsonl\n"
	if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("only set flags override the file", func(t *testing.T) {
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		err := fs.Parse([]string{"--config", p, "--api-socket", "/run/flag.sock", "--audit-file", "/var/log/flag.jsonl",
			"--audit-format", "ocsf", "--metrics-addr", ":9090"})
		if err != nil {
			t.Fatal(err)
		}
		if f.ConfigPath() != p {
			t.Errorf("ConfigPath = %q", f.ConfigPath())
		}
		c, err := f.Load()
		if err != nil {
			t.Fatal(err)
		}
		if c.APISocket != "/run/flag.sock" || c.Audit.File != "/var/log/flag.jsonl" || c.Audit.Format != "ocsf" || c.MetricsAddr != ":9090" {
			t.Errorf("flags did not override: %+v", c)
		}
		// Not on the command line: the file wins over the flag default.
		if c.StateDir != "/var/lib/file" {
			t.Errorf("state_dir = %q, want the file's value", c.StateDir)
		}
		if c.BPFFSPath != DefaultBPFFSPath {
			t.Errorf("bpffs_path = %q, want the default", c.BPFFSPath)
		}
	})

	t.Run("flag set to its default value still overrides", func(t *testing.T) {
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse([]string{"--config", p, "--api-socket", DefaultAPISocket, "--metrics-addr", ""}); err != nil {
			t.Fatal(err)
		}
		c, err := f.Load()
		if err != nil {
			t.Fatal(err)
		}
		if c.APISocket != DefaultAPISocket {
			t.Errorf("api_socket = %q, want %q (explicit flag)", c.APISocket, DefaultAPISocket)
		}
		if c.MetricsAddr != "" {
			t.Errorf(`--metrics-addr "" must disable metrics, got %q`, c.MetricsAddr)
		}
	})

	t.Run("Apply reports overridden keys", func(t *testing.T) {
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse([]string{"--state-dir", "/s", "--drift-action", "kill", "--max-ttl", "2h"}); err != nil {
			t.Fatal(err)
		}
		c := Default()
		keys := f.Apply(&c)
		if !reflect.DeepEqual(keys, []string{"state_dir", "sessions.drift_action", "sessions.max_ttl"}) {
			t.Errorf("Apply keys = %v", keys)
		}
		if c.StateDir != "/s" || c.Sessions.DriftAction != "kill" || c.Sessions.MaxTTL.Std() != 2*time.Hour {
			t.Errorf("Apply: %+v", c)
		}
		if c.Sessions.DefaultTTL.Std() != time.Hour {
			t.Errorf("unset --default-ttl changed default_ttl: %v", c.Sessions.DefaultTTL)
		}
	})

	t.Run("bad duration flag fails at parse", func(t *testing.T) {
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		BindFlags(fs)
		if err := fs.Parse([]string{"--default-ttl", "soon"}); err == nil || !strings.Contains(err.Error(), "default-ttl") {
			t.Errorf("Parse(--default-ttl soon) = %v", err)
		}
	})

	t.Run("no config file means defaults", func(t *testing.T) {
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		c, err := f.Load()
		if err != nil || !reflect.DeepEqual(c, Default()) {
			t.Errorf("Load() = %+v, %v; want Default()", c, err)
		}
	})

	t.Run("a flag can repair the file; a bad flag is rejected", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(bad, []byte("audit:\n  format: xml\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse([]string{"--config", bad, "--audit-format", "json"}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Load(); err != nil {
			t.Errorf("--audit-format json should repair the file: %v", err)
		}
		fs = flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f = BindFlags(fs)
		if err := fs.Parse([]string{"--audit-format", "xml"}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), "audit.format") {
			t.Errorf("bad --audit-format: err = %v", err)
		}
	})

	t.Run("unknown key in file is still an error", func(t *testing.T) {
		bad := filepath.Join(dir, "unknown.yaml")
		if err := os.WriteFile(bad, []byte("nope: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("agentfenced", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse([]string{"--config", bad}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Load(); err == nil || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestDurationJSON(t *testing.T) {
	var d Duration
	if err := d.UnmarshalJSON([]byte(`"1m30s"`)); err != nil || d.Std() != 90*time.Second {
		t.Fatalf("UnmarshalJSON = %v, %v", d, err)
	}
	b, err := d.MarshalJSON()
	if err != nil || string(b) != `"1m30s"` {
		t.Errorf("MarshalJSON = %s, %v", b, err)
	}
	for _, bad := range []string{`90`, `"90"`, `"1 minute"`, `true`, `{}`} {
		if err := d.UnmarshalJSON([]byte(bad)); err == nil {
			t.Errorf("UnmarshalJSON(%s) accepted", bad)
		}
	}
}

// TestDocsExample keeps the full example in docs/config.md valid, and checks
// that the docs mention every key.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Skipf("docs/config.md not found: %v", err)
	}
	_, rest, ok := strings.Cut(string(doc), "## Full example\n\n```yaml\n")
	if !ok {
		t.Fatal("docs/config.md has no yaml block under ## Full example")
	}
	example, _, _ := strings.Cut(rest, "```")
	if _, err := Parse([]byte(example)); err != nil {
		t.Fatalf("the full example in docs/config.md does not parse: %v", err)
	}
	for _, key := range []string{"api_socket", "metrics_addr", "bpffs_path", "cgroup_root", "state_dir",
		"audit.file", "audit.format", "audit.sinks", "sessions.max_ttl", "sessions.default_ttl",
		"sessions.violation_budget", "sessions.drift_action", "sessions.max_sessions", "authz.uids",
		"authz.gids", "authz.exes", "authz.spiffe.listen_addr", "authz.spiffe.trust_domain",
		"authz.spiffe.allowed_ids", "authz.spiffe.svid.workload_api_socket", "authz.spiffe.svid.cert_file",
		"authz.spiffe.svid.key_file", "authz.spiffe.svid.bundle_file", "dns.min_ttl", "dns.max_ttl", "process.ancestry_depth", "process.cache_size",
		"process.exit_grace"} {
		if !strings.Contains(string(doc), "`"+key) {
			t.Errorf("docs/config.md does not document %s", key)
		}
	}
}
