package audit

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const exampleSinks = `
sinks:
  - name: local
    type: file
    format: json
    file: {path: /var/log/agentfence/audit.jsonl, max_size_mb: 100, max_files: 10}
  - name: soc-syslog
    type: syslog
    format: ocsf
    filter: {denials_only: true}
    syslog:
      address: siem.example.com:6514
      tls: true
      ca_file: /etc/agentfence/siem-ca.pem
      cert_file: /etc/agentfence/client.pem
      key_file: /etc/agentfence/client-key.pem
    retry: {initial_backoff: 1s, max_backoff: 1m}
  - name: splunk
    type: hec
    format: ocsf
    filter: {kinds: [connect, sendmsg, session]}
    hec:
      url: https://splunk.example.com:8088
      token_file: /etc/agentfence/hec-token
      batch_size: 200
      flush_interval: 2s
      gzip: true
    spool: {max_bytes: 268435456}
`

func TestExampleConfigDecodesAndValidates(t *testing.T) {
	var cfg struct {
		Sinks []SinkConfig `json:"sinks"`
	}
	if err := yaml.UnmarshalStrict([]byte(exampleSinks), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Sinks) != 3 || cfg.Sinks[2].HEC.BatchSize != 200 || !cfg.Sinks[1].Syslog.TLS {
		t.Fatalf("decoded %+v", cfg.Sinks)
	}
	if err := ValidateSinks(cfg.Sinks); err != nil {
		t.Fatal(err)
	}
	// docs/audit.md shows the same example; keep them in step.
	if doc, err := os.ReadFile("../docs/audit.md"); err == nil && !strings.Contains(string(doc), "token_file: /etc/agentfence/hec-token") {
		t.Error("docs/audit.md no longer contains the example sinks config")
	}
}

func TestValidateNamesTheField(t *testing.T) {
	sinks := []SinkConfig{
		{Name: "a", Type: "stdout"},
		{Name: "b", Type: "file", File: &FileConfig{Path: "/tmp/x"}},
		{Name: "c", Type: "syslog", Syslog: &SyslogConfig{Address: "no-port"}},
		{Name: "a", Type: "hec", HEC: &HECConfig{URL: "ftp://x", FlushInterval: "soon"}},
		{Name: "e", Type: "webhook", Webhook: &WebhookConfig{URL: "https://user:pw@x/"}, Format: "xml"},
		{Name: "f", Type: "syslog", Syslog: &SyslogConfig{Address: "h:1", CertFile: "c"}},
		{Name: "g", Type: "stdout", File: &FileConfig{}},
	}
	err := ValidateSinks(sinks)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		"sinks[2].syslog.address:",
		"sinks[3].name: duplicate of sinks[0].name",
		"sinks[3].hec.url: scheme must be http or https",
		"sinks[3].hec.token_file: required",
		`sinks[3].hec.flush_interval: "soon" is not a duration`,
		"sinks[4].format:",
		"sinks[4].webhook.url: must not contain credentials",
		"sinks[5].syslog.cert_file:",
		"sinks[5].syslog.tls:",
		`sinks[6].file: set but type is "stdout"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "pw") {
		t.Error("error message leaks URL credentials")
	}
	if strings.Contains(msg, "sinks[0]") && !strings.Contains(msg, "sinks[0].name") {
		t.Errorf("valid sink 0 reported: %s", msg)
	}
}

func TestFilter(t *testing.T) {
	denied := sampleRecord(1)
	denied.Outcome = &Outcome{Verdict: VerdictDenied}
	allowed := sampleRecord(2)
	session := Record{Kind: KindSession, Event: "opened"}
	gap := Record{Kind: KindGap, Gap: &Gap{Source: "kernel_ringbuf", Count: 1}}
	cases := []struct {
		fc   *FilterConfig
		want [4]bool // denied, allowed, session, gap
	}{
		{nil, [4]bool{true, true, true, true}},
		{&FilterConfig{DenialsOnly: true}, [4]bool{true, false, false, true}},
		{&FilterConfig{Kinds: []string{KindSession}}, [4]bool{false, false, true, true}},
		{&FilterConfig{DenialsOnly: true, Kinds: []string{KindConnect, KindSession}}, [4]bool{true, false, true, true}},
	}
	for i, c := range cases {
		f := NewFilter(c.fc)
		got := [4]bool{f.Match(&denied), f.Match(&allowed), f.Match(&session), f.Match(&gap)}
		if got != c.want {
			t.Errorf("case %d: got %v want %v", i, got, c.want)
		}
	}
}
