package ocsf

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// Required attributes in OCSF 1.3.0, resolved from the schema repository
// (github.com/ocsf/ocsf-schema, tag 1.3.0): the class file, its category
// parent and base_event.json with their includes, plus the profiles the
// event declares (security_control makes action_id required). Keep this
// list in step with SchemaVersion.
var requiredByClass = map[int][]string{
	// events/network/network_activity.json + network.json + base_event.json
	ClassNetworkActivity: {"activity_id", "category_uid", "class_uid", "dst_endpoint", "metadata", "severity_id", "time", "type_uid", "action_id"},
	// events/network/http.json (http_activity)
	ClassHTTPActivity: {"activity_id", "category_uid", "class_uid", "dst_endpoint", "http_request", "http_response", "metadata", "severity_id", "time", "type_uid", "action_id"},
	// events/network/dns.json (dns_activity)
	ClassDNSActivity: {"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid", "action_id"},
	// events/system/process.json + system.json
	ClassProcessActivity: {"activity_id", "actor", "category_uid", "class_uid", "device", "metadata", "process", "severity_id", "time", "type_uid"},
	// events/iam/entity_management.json
	ClassEntityManagement: {"activity_id", "category_uid", "class_uid", "entity", "metadata", "severity_id", "time", "type_uid"},
	// events/system/event_log.json
	ClassEventLogActivity: {"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid"},
}

// Required attributes of objects we emit, and their "at least one of"
// constraints (objects/*.json at 1.3.0).
var requiredByObject = map[string][]string{
	"metadata":               {"product", "version"},
	"metadata.product":       {"vendor_name"},
	"device":                 {"type_id"},
	"query":                  {"hostname"},
	"connection_info":        {"direction_id"},
	"process.file":           {"name", "type_id"},
	"actor.process.file":     {"name", "type_id"},
	"process.file.hashes[0]": {"algorithm_id", "value"},
	// http_response.code is required too, but a call whose response was
	// never seen has none (HTTPResponse): not listed, so such a call
	// passes; records() has calls with a response, checked by the golden
	// files and invariants_test.go.
}

var atLeastOneOf = map[string][]string{
	"dst_endpoint":     {"ip", "uid", "name", "hostname", "svc_name", "instance_uid", "interface_uid", "interface_name"},
	"process":          {"pid", "uid"},
	"actor.process":    {"pid", "uid"},
	"actor":            {"process", "user", "invoked_by", "session", "app_name", "app_uid"},
	"entity":           {"name", "uid", "device", "group", "org", "policy", "user"},
	"http_request.url": {"url_string", "path"},
}

var categoryOf = map[int]int{
	ClassNetworkActivity: 4, ClassHTTPActivity: 4, ClassDNSActivity: 4, ClassProcessActivity: 1,
	ClassEntityManagement: 3, ClassEventLogActivity: 1,
}

func records() []audit.Record {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123_000_000, time.UTC)
	exit := 0
	base := func(kind string) audit.Record {
		return audit.Record{
			Schema: "1", Seq: 42, PrevHash: "ab", Time: t0, Kind: kind, Host: "node-1",
			Session: &audit.Session{ID: "ses_1", Intent: "triage issue 12", Mode: "enforce"},
			Agent:   &audit.Agent{ID: "spiffe://corp/agent/coder", Name: "coder"},
			Origin:  &audit.Origin{Kind: "human", Principal: "alice"},
			Process: &audit.Process{PID: 10, PPID: 9, UID: 1000, Comm: "curl", Exe: "/usr/bin/curl", SHA256: "00ff", ContainerID: "c1"},
		}
	}
	var out []audit.Record
	for _, v := range []string{audit.VerdictAllowed, audit.VerdictDenied, audit.VerdictWouldDeny} {
		for _, k := range []string{audit.KindConnect, audit.KindSendmsg, audit.KindDNS} {
			r := base(k)
			r.Destination = &audit.Destination{IP: "1.2.3.4", Port: 443, Protocol: "tcp", Hostname: "example.com"}
			r.Outcome = &audit.Outcome{Verdict: v, Rule: "allow example.com:443"}
			out = append(out, r)
		}
	}
	ex := base(audit.KindExec)
	out = append(out, ex)
	ex.Process.ExitCode = &exit
	out = append(out, ex)
	bare := audit.Record{Schema: "1", Time: t0, Kind: audit.KindExec, Process: &audit.Process{PID: 1}}
	out = append(out, bare)
	for _, ev := range slices.Sorted(maps.Keys(sessionActivities)) { // sorted: golden case names use the index
		r := base(audit.KindSession)
		r.Process, r.Event, r.Actor = nil, ev, "ops@example.com"
		out = append(out, r)
	}
	out = append(out, audit.Record{Schema: "1", Time: t0, Kind: audit.KindGap, Host: "node-1",
		Gap: &audit.Gap{Source: "spool:siem", Count: 5, FirstSeq: 3, LastSeq: 7}})
	for _, x := range []audit.Escape{{What: "cgroup_move", Cgroup: "/", CgroupID: 1}, {What: "cgroup_move", Cgroup: "/x", ByPID: 77},
		{What: "clone_into_cgroup", ChildPID: 12}} {
		r := base(audit.KindEscape)
		r.Escape, r.Outcome = &x, &audit.Outcome{Verdict: audit.VerdictFlagged}
		out = append(out, r)
	}
	out = append(out, audit.Record{Schema: "1", Time: t0, Kind: audit.KindEscape, Process: &audit.Process{PID: 3},
		Escape: &audit.Escape{What: "cgroup_move"}})
	// Sockets of families no hook judges: refused, and created (detected).
	for _, v := range []string{audit.VerdictDenied, audit.VerdictDetected} {
		r := base(audit.KindSocket)
		r.Destination = nil
		r.Outcome = &audit.Outcome{Verdict: v, Reason: "socket_family"}
		r.Socket = &audit.Socket{Family: "packet", Type: "raw", Protocol: 768}
		if v == audit.VerdictDenied {
			r.Socket.RefusedBy, r.Outcome.Errno = "seccomp", "EAFNOSUPPORT"
		}
		out = append(out, r)
	}
	// A connect without a destination must still carry dst_endpoint.
	nd := base(audit.KindConnect)
	nd.Outcome = &audit.Outcome{Verdict: audit.VerdictDenied}
	nd.Destination = &audit.Destination{IP: "::1"}
	out = append(out, nd)
	// A member launches the declared server github: as declared, and with
	// an injecting variable (it stays the agent's). Then the server's own
	// connect, and the agent's denied one to where only the server may go.
	github := audit.MCP{Server: "github", Session: "ses_2", Serves: "ses_1", Exe: "/usr/bin/node",
		Script: "/opt/mcp/github/index.js", ScriptSHA256: "9f86d081"}
	node := func(kind string) audit.Record {
		r := base(kind)
		r.Process = &audit.Process{PID: 20, PPID: 10, UID: 1000, Comm: "node", Exe: "/usr/bin/node",
			Argv: []string{"node", "/opt/mcp/github/index.js"}, ContainerID: "c1"}
		return r
	}
	api := audit.Destination{IP: "140.82.112.6", Port: 443, Protocol: "tcp", Hostname: "api.github.com"}
	launched := node(audit.KindMCP)
	launched.Outcome, launched.MCP = &audit.Outcome{Verdict: audit.VerdictAllowed}, &github
	judged := github
	judged.Session = "" // it runs in no session of the server's
	injected := node(audit.KindMCP)
	injected.Outcome, injected.MCP = &audit.Outcome{Verdict: audit.VerdictFlagged, Reason: "injection"}, &judged
	served := node(audit.KindConnect)
	served.Session = &audit.Session{ID: "ses_2", Intent: "triage issue 12", Mode: "enforce", Parent: "ses_1"}
	served.Destination, served.MCP = &api, &github
	served.Outcome = &audit.Outcome{Verdict: audit.VerdictAllowed, Rule: "allow api.github.com:443"}
	held := base(audit.KindConnect)
	held.Destination = &api
	held.Outcome = &audit.Outcome{Verdict: audit.VerdictDenied, Reason: audit.ReasonHeldByMCPServer, Errno: "EPERM", HeldBy: "github"}
	out = append(out, launched, injected, served, held)
	// A member's HTTP calls over TLS: a POST with a bearer token, a PATCH
	// (1.3.0 has no activity for it), and a call whose connection closed
	// before any response, seen only from its middle (partial).
	call := func(h audit.HTTP) audit.Record {
		r := base(audit.KindHTTP)
		r.Process = &audit.Process{PID: 30, PPID: 10, UID: 1000, Comm: "python3", Exe: "/usr/bin/python3.12", ContainerID: "c1"}
		r.Destination = &audit.Destination{IP: "203.0.113.9", Port: 443, Protocol: "tcp", Hostname: "api.example.com"}
		r.Outcome = &audit.Outcome{Verdict: audit.VerdictAllowed}
		r.TLS = &audit.TLS{Library: "openssl", Socket: true}
		r.HTTP = &h
		return r
	}
	post := call(audit.HTTP{Method: "POST", Host: "api.example.com", Path: "/v1/tickets", Query: "q:5d41402a",
		Status: 201, Version: "1.1", RequestBytes: 512, ResponseBytes: 1380, DurationMS: 184})
	post.Credential = &audit.Credential{Type: "bearer", Header: "authorization", Fingerprint: "3f2a9c0e7b114d58"}
	patch := call(audit.HTTP{Method: "PATCH", Host: "api.example.com", Path: "/v1/tickets/12",
		Status: 200, Version: "2", RequestBytes: 64, ResponseBytes: 220, DurationMS: 95})
	patch.Credential = &audit.Credential{Type: "api_key", Header: "x-api-key", Fingerprint: "b7e1d2c3a4f50617", Holder: "ticket-bot"}
	unanswered := call(audit.HTTP{Path: "/v1/stream", RequestBytes: 300, DurationMS: 30000, Partial: true})
	return append(out, post, patch, unanswered)
}

func lookup(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, part := range splitPath(path) {
		obj, ok := cur.(map[string]any)
		if !ok {
			if arr, ok := cur.([]any); ok && part == "[0]" && len(arr) > 0 {
				cur = arr[0]
				continue
			}
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func splitPath(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' || p[i] == '[' {
			if i > start {
				out = append(out, p[start:i])
			}
			if i < len(p) && p[i] == '[' {
				out = append(out, p[i:i+3])
				i += 3
			}
			start = i + 1
		}
	}
	return out
}

// schemaViolations lists the required attributes m lacks: those of its
// class and of the objects it has, and with atLeastOne the "at least one
// of" constraints, which a record missing the part that fills them (a
// connect without a destination) cannot meet.
func schemaViolations(m map[string]any, atLeastOne bool) []string {
	var out []string
	class, _ := lookup(m, "class_uid")
	n, _ := strconv.Atoi(fmt.Sprint(class))
	for _, a := range requiredByClass[n] {
		if _, ok := m[a]; !ok {
			out = append(out, fmt.Sprintf("class %d lacks required %q", n, a))
		}
	}
	for obj, attrs := range requiredByObject {
		if _, present := lookup(m, obj); !present {
			continue
		}
		for _, a := range attrs {
			if _, ok := lookup(m, obj+"."+a); !ok {
				out = append(out, fmt.Sprintf("%s lacks required %q", obj, a))
			}
		}
	}
	if !atLeastOne {
		return out
	}
	for obj, any1 := range atLeastOneOf {
		if _, present := lookup(m, obj); !present {
			continue
		}
		if !slices.ContainsFunc(any1, func(a string) bool { _, ok := lookup(m, obj+"."+a); return ok }) {
			out = append(out, fmt.Sprintf("%s has none of %v", obj, any1))
		}
	}
	return out
}

func TestRequiredAttributes(t *testing.T) {
	enc := Encoder{ProductVersion: "0.1.0-test"}
	seen := map[int]bool{}
	for i, r := range records() {
		b, err := enc.Append(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("%d:%s/%s", i, r.Kind, r.Event)
		class := int(m["class_uid"].(float64))
		seen[class] = true
		if _, ok := requiredByClass[class]; !ok {
			t.Fatalf("%s: class %d has no required-attribute list", name, class)
		}
		for _, v := range schemaViolations(m, true) {
			t.Errorf("%s: %s: %s", name, v, b)
		}
		act := int(m["activity_id"].(float64))
		if got := int(m["type_uid"].(float64)); got != class*100+act {
			t.Errorf("%s: type_uid %d != %d*100+%d", name, got, class, act)
		}
		if got := int(m["category_uid"].(float64)); got != categoryOf[class] {
			t.Errorf("%s: category_uid %d", name, got)
		}
		if got, _ := lookup(m, "metadata.version"); got != SchemaVersion {
			t.Errorf("%s: metadata.version %v", name, got)
		}
		if got, _ := lookup(m, "metadata.product.name"); got != "agentfence" {
			t.Errorf("%s: metadata.product.name %v", name, got)
		}
		if got := m["time"].(float64); got != float64(r.Time.UnixMilli()) {
			t.Errorf("%s: time %v", name, got)
		}
	}
	for class := range requiredByClass {
		if !seen[class] {
			t.Errorf("no test record maps to class %d", class)
		}
	}
}

func TestVerdictMapping(t *testing.T) {
	enc := Encoder{}
	for _, c := range []struct {
		verdict                  string
		action, disposition, sev int
	}{
		{audit.VerdictAllowed, 1, 1, 1},
		{audit.VerdictDenied, 2, 2, 3},
		{audit.VerdictWouldDeny, 1, 15, 2},
		{audit.VerdictFlagged, 1, 15, 4},
	} {
		r := audit.Record{Kind: audit.KindConnect, Outcome: &audit.Outcome{Verdict: c.verdict}, Destination: &audit.Destination{IP: "1.1.1.1"},
			Session: &audit.Session{ID: "s1", Intent: "x"}}
		ev := enc.Event(&r)
		if *ev.ActionID != c.action || *ev.DispositionID != c.disposition || ev.SeverityID != c.sev {
			t.Errorf("%s: action %d disposition %d severity %d", c.verdict, *ev.ActionID, *ev.DispositionID, ev.SeverityID)
		}
		if ev.Actor == nil || ev.Actor.Session == nil || ev.Actor.Session.UID != "s1" || ev.Unmapped.Agentfence.Intent != "x" {
			t.Errorf("%s: session not mapped: %+v", c.verdict, ev.Actor)
		}
	}
}

// An aggregate of repeats carries OCSF's count, start_time and end_time;
// a single decision none of them.
func TestAggregateCount(t *testing.T) {
	first := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	last := first.Add(900 * time.Millisecond)
	r := audit.Record{Kind: audit.KindConnect, Time: last, Count: 19, FirstTime: &first, LastTime: &last,
		Outcome: &audit.Outcome{Verdict: audit.VerdictAllowed}, Destination: &audit.Destination{IP: "127.0.0.1", Port: 443, Protocol: "tcp"}}
	ev := Encoder{}.Event(&r)
	if ev.Count != 19 || ev.StartTime != first.UnixMilli() || ev.EndTime != last.UnixMilli() || ev.Time != last.UnixMilli() {
		t.Errorf("count %d from %d to %d at %d", ev.Count, ev.StartTime, ev.EndTime, ev.Time)
	}
	b, err := Encoder{}.Append(nil, &r)
	if err != nil || !strings.Contains(string(b), `"count":19`) {
		t.Errorf("encoded %s, %v: no count", b, err)
	}
	r.Count, r.FirstTime, r.LastTime = 0, nil, nil
	if ev := (Encoder{}).Event(&r); ev.Count != 0 || ev.StartTime != 0 || ev.EndTime != 0 {
		t.Errorf("a single decision: count %d from %d to %d", ev.Count, ev.StartTime, ev.EndTime)
	}
}

// A session record's kept capabilities land in entity.data.kept_caps, the
// managed entity's own data, beside the session's mode.
func TestSessionKeptCaps(t *testing.T) {
	r := audit.Record{Kind: audit.KindSession, Event: "opened",
		Session: &audit.Session{ID: "s1", Intent: "x", KeptCaps: []string{"CAP_NET_RAW"}}}
	b, err := Encoder{}.Append(nil, &r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if v, ok := lookup(m, "entity.data.kept_caps[0]"); !ok || v != "CAP_NET_RAW" {
		t.Errorf("entity.data.kept_caps: %v in %s", v, b)
	}
	r.Session.KeptCaps = nil
	if ev := (Encoder{}).Event(&r); ev.Entity.Data != nil {
		t.Errorf("a session with nothing kept has entity data %+v", ev.Entity.Data)
	}
}

// benchRecord is a full connect record, the typical sink load.
func benchRecord() audit.Record {
	r := records()[1]
	r.Process.Argv = []string{"curl", "https://example.com/"}
	return r
}

func BenchmarkEncodeOCSF(b *testing.B) {
	benchmarkEncode(b, Encoder.Append, benchRecord())
}

// BenchmarkAppendHTTP is BenchmarkEncodeOCSF for an http record: a POST
// with a credential, the call a member's API client makes.
func BenchmarkAppendHTTP(b *testing.B) {
	rs := records()
	benchmarkEncode(b, Encoder.Append, rs[len(rs)-3])
}

// BenchmarkEncodeOCSFReflection writes the same record's Event with
// encoding/json, the serializer encode.go replaced, for the side-by-side
// numbers in docs/benchmarks-audit.md.
func BenchmarkEncodeOCSFReflection(b *testing.B) {
	benchmarkEncode(b, func(e Encoder, dst []byte, r *audit.Record) ([]byte, error) {
		ev := e.Event(r)
		return appendReflection(dst, &ev)
	}, benchRecord())
}

func benchmarkEncode(b *testing.B, appendFn func(Encoder, []byte, *audit.Record) ([]byte, error), r audit.Record) {
	enc := Encoder{ProductVersion: "0.1.0"}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = appendFn(enc, buf[:0], &r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
