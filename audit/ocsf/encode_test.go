package ocsf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// The serializer in encode.go is checked against encoding/json, the
// encoder it replaced: Append must write, byte for byte, what encoding/json
// writes for Event with HTML escaping off. The mapping in ocsf.go is
// checked by the golden files (golden_test.go) and by the properties in
// invariants_test.go, which every record of encodeTable and every fuzzed
// record must keep.

// appendReflection appends encoding/json's encoding of v with HTML escaping
// off and without the Encoder's trailing newline: for an Event, the bytes
// Append must write.
func appendReflection(dst []byte, v any) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return dst, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func jsonReference(t testing.TB, v any) []byte {
	t.Helper()
	b, err := appendReflection(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// awkward strings: escapes encoding/json writes (quote, backslash, short
// and \u00XX control escapes, invalid UTF-8, U+2028/U+2029) and bytes it
// must leave alone with HTML escaping off (<>&, DEL, valid multi-byte).
var awkward = []string{
	"",
	"plain",
	`q"uote\back/slash`,
	"ctl\x00\x01\x07\b\t\n\v\f\r\x1b\x1f end",
	"<script>&amp;</script>",
	"del\x7f é 日本 🙂",
	"ls\u2028ps\u2029x",
	"bad\xff\xfe utf8 \xc3 \xe2\x80 \xed\xa0\x80 \xf4\x90\x80\x80",
	"\xe2\x80\xa8\xe2\x80\xa9",
	"trailing\xe2",
}

// fullRecord fills every member of r that the mapping reads, with s in
// every string. Only http records carry a call: no other kind ever has
// one, and their golden files stay as they were.
func fullRecord(kind, verdict, event, s string) audit.Record {
	exit := -3
	r := audit.Record{
		Schema: "1" + s, Seq: 1 << 40, PrevHash: "ph" + s,
		Time: time.Date(2026, 3, 1, 12, 0, 0, 987_654_321, time.UTC),
		Kind: kind, Host: "host" + s,
		Session: &audit.Session{ID: "ses" + s, Intent: "intent" + s, Mode: "mode" + s, Parent: "parent" + s, KeptCaps: []string{"CAP_NET_RAW", s}, DNS: "dns" + s,
			GateCaps: []audit.HeldCaps{{PID: 8, Caps: []string{"CAP_SYS_ADMIN", s}}, {PID: 9}}},
		Agent:  &audit.Agent{ID: "spiffe://x/" + s, Name: "name" + s, Version: "v" + s, Owner: "owner" + s},
		Origin: &audit.Origin{Kind: "okind" + s, Principal: "alice" + s},
		Process: &audit.Process{
			PID: 4294967295, TID: 7, PPID: 6, UID: 0, GID: 65534, Comm: "comm" + s,
			Exe: "/usr/bin/" + s + "/exe", SHA256: "sha" + s, Argv: []string{"a" + s, "", s},
			CgroupID: 1<<64 - 1, Cgroup: "/cg/" + s, ContainerID: "ctr" + s, PodUID: "pod" + s,
			Ancestry: []string{"init", s, ""}, ExitCode: &exit,
		},
		Destination: &audit.Destination{IP: "10.0.0.1" + s, Port: 65535, Protocol: "udp", Hostname: "h" + s},
		Source:      &audit.Destination{IP: "192.0.2.7" + s, Port: 40000, Protocol: "tcp", Hostname: "src" + s},
		Outcome:     &audit.Outcome{Verdict: verdict, Rule: "rule" + s, Reason: "reason" + s, Errno: "EPERM" + s, Suppressed: 3, HeldBy: "held" + s},
		Gap:         &audit.Gap{Source: "src" + s, Count: 9, FirstSeq: 1, LastSeq: 1<<64 - 1},
		Escape:      &audit.Escape{What: "what" + s, Cgroup: "/cg" + s, CgroupID: 1<<64 - 1, ByPID: 5, ChildPID: 4294967295, NetNS: 4026531840, Via: "via" + s, TargetPID: 6},
		Socket:      &audit.Socket{Family: "packet" + s, Type: "raw" + s, Protocol: -768, RefusedBy: "seccomp" + s},
		Query:       &audit.Query{Name: "q" + s, Truncated: true, Type: "TXT" + s},
		MCP:         &audit.MCP{Server: "srv" + s, Session: "ses_srv" + s, Serves: "ses" + s, Exe: "/usr/bin/node" + s, Script: "/opt/" + s + "/index.js", ScriptSHA256: "sha" + s},
		Event:       event, Actor: "actor" + s,
	}
	if kind == audit.KindConnect || kind == audit.KindExec {
		// A pod on a network kind and a process kind; the mapping is
		// the same for every kind, and the others' golden files stay.
		r.Pod = &audit.Pod{UID: "pod" + s, Namespace: "ns" + s, Name: "agent-0" + s, ServiceAccount: "sa" + s, Node: "node" + s,
			Labels: map[string]string{"app": "triage" + s, "team": s}}
	}
	if kind == audit.KindHTTP {
		r.HTTP = &audit.HTTP{Method: "POST" + s, Host: "api.example.com" + s + ":8443", Path: "/v1/" + s, Query: "qh" + s,
			Status: 201, Version: "1.1" + s, RequestBytes: 1 << 33, ResponseBytes: 17, DurationMS: 250, Partial: true}
		r.TLS = &audit.TLS{Library: "openssl:node" + s, Socket: true}
		r.Credential = &audit.Credential{Type: "bearer" + s, Header: "authorization" + s, Fingerprint: "3f2a9c" + s,
			KeyID: "AKIA" + s, Holder: "holder" + s}
	}
	return r
}

// allKinds and allVerdicts are indexed by fuzzRecord: new values go at the
// end, so the seed corpus keeps the records it was written for. A kind
// byte whose low four bits are 15 stays an unknown kind while allKinds
// has fewer than 16 kinds.
var allKinds = []string{
	audit.KindConnect, audit.KindSendmsg, audit.KindSocket, audit.KindDestroy,
	audit.KindExec, audit.KindSession, audit.KindDNS, audit.KindGap, audit.KindEscape,
	audit.KindBind, audit.KindInbound, audit.KindMCP, audit.KindHTTP, audit.KindTLSUncovered, audit.KindAgent,
}

var allVerdicts = []string{audit.VerdictAllowed, audit.VerdictDenied, audit.VerdictWouldDeny, audit.VerdictDestroyed, audit.VerdictFlagged, "", "other", audit.VerdictDetected}

func sessionEvents() []string {
	evs := []string{"", "unknown-step"}
	for k := range sessionActivities {
		evs = append(evs, k)
	}
	slices.Sort(evs)
	return evs
}

// recordDrops each take one part, or a few members, out of a fullRecord,
// so every "is it there" branch of the mapping is taken both ways.
var recordDrops = []struct {
	name string
	drop func(*audit.Record)
}{
	{"no-session", func(r *audit.Record) { r.Session = nil }},
	{"no-agent", func(r *audit.Record) { r.Agent = nil }},
	{"no-origin", func(r *audit.Record) { r.Origin = nil }},
	{"no-process", func(r *audit.Record) { r.Process = nil }},
	{"no-destination", func(r *audit.Record) { r.Destination = nil }},
	{"no-source", func(r *audit.Record) { r.Source = nil }},
	{"no-destination-no-source", func(r *audit.Record) { r.Destination, r.Source = nil, nil }},
	{"no-outcome", func(r *audit.Record) { r.Outcome = nil }},
	{"no-gap", func(r *audit.Record) { r.Gap = nil }},
	{"no-escape", func(r *audit.Record) { r.Escape = nil }},
	{"no-socket", func(r *audit.Record) { r.Socket = nil }},
	{"socket-not-refused", func(r *audit.Record) { r.Socket.RefusedBy = "" }},
	{"escape-what-only", func(r *audit.Record) {
		r.Escape.Cgroup, r.Escape.CgroupID, r.Escape.ByPID, r.Escape.ChildPID, r.Escape.Via, r.Escape.TargetPID = "", 0, 0, 0, "", 0
	}},
	{"no-host-seq-event-actor", func(r *audit.Record) { r.Host, r.Seq, r.Event, r.Actor = "", 0, "", "" }},
	{"process-running-no-parent", func(r *audit.Record) {
		r.Process.ExitCode, r.Process.PPID, r.Process.Argv, r.Process.Ancestry = nil, 0, nil, []string{}
	}},
	{"process-no-exe", func(r *audit.Record) { r.Process.Exe, r.Process.SHA256 = "", "" }},
	{"process-no-hash-no-container", func(r *audit.Record) { r.Process.SHA256, r.Process.ContainerID, r.Process.PodUID = "", "", "" }},
	{"process-pod-only", func(r *audit.Record) { r.Process.ContainerID = "" }},
	{"process-container-only-pid-0", func(r *audit.Record) { r.Process.PodUID, r.Process.PID = "", 0 }},
	{"destination-tcp-no-hostname", func(r *audit.Record) { r.Destination.Hostname, r.Destination.Protocol = "", "tcp" }},
	{"destination-hostname-only", func(r *audit.Record) { r.Destination.IP, r.Destination.Port, r.Destination.Protocol = "", 0, "" }},
	{"destination-no-address-no-socket", func(r *audit.Record) {
		r.Destination.IP, r.Destination.Port, r.Destination.Hostname, r.Socket = "", 0, "", nil
	}},
	{"outcome-verdict-only", func(r *audit.Record) {
		r.Outcome.Rule, r.Outcome.Reason, r.Outcome.Errno, r.Outcome.HeldBy = "", "", "", ""
	}},
	{"gap-zero", func(r *audit.Record) { r.Gap.FirstSeq, r.Gap.LastSeq, r.Gap.Count = 0, 0, 0 }},
	{"session-no-mode-parent", func(r *audit.Record) { r.Session.Mode, r.Session.Parent = "", "" }},
	{"session-caps-only", func(r *audit.Record) {
		r.Session.Mode, r.Session.Parent, r.Session.KeptCaps, r.Session.DNS = "", "", nil, ""
	}},
	{"session-no-data", func(r *audit.Record) {
		r.Session.Mode, r.Session.Parent, r.Session.KeptCaps, r.Session.DNS, r.Session.GateCaps = "", "", nil, "", nil
	}},
	{"session-empty-caps", func(r *audit.Record) {
		r.Session.Mode, r.Session.KeptCaps, r.Session.GateCaps = "", []string{}, []audit.HeldCaps{}
	}},
	{"no-session-dns-no-query", func(r *audit.Record) { r.Session.DNS, r.Query = "", nil }},
	{"query-no-type-no-hostname", func(r *audit.Record) { r.Query.Type, r.Destination.Hostname = "", "" }},
	{"agent-no-name-id", func(r *audit.Record) { r.Agent.Name, r.Agent.ID = "", "" }},
	{"kind-event-actor-only", func(r *audit.Record) {
		*r = audit.Record{Kind: r.Kind, Event: r.Event, Actor: r.Actor}
	}},
	{"empty-process-only", func(r *audit.Record) { *r = audit.Record{Kind: r.Kind, Process: &audit.Process{}} }},
	{"no-mcp", func(r *audit.Record) { r.MCP = nil }},
	{"mcp-server-only", func(r *audit.Record) {
		r.MCP.Session, r.MCP.Serves, r.MCP.Exe, r.MCP.Script, r.MCP.ScriptSHA256 = "", "", "", "", ""
	}},
	// The http drops take no member of a record of another kind: those
	// carry no call.
	{"no-http", func(r *audit.Record) { r.HTTP = nil }},
	{"http-patch", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Method = "PATCH"
		}
	}},
	{"http-method-lower-case", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Method = "get"
		}
	}},
	{"http-no-response", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Status, r.HTTP.ResponseBytes, r.HTTP.DurationMS, r.HTTP.Partial = 0, 0, 0, true
		}
	}},
	{"http-unseen-request-line", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Method, r.HTTP.Host, r.HTTP.Path, r.HTTP.Version, r.HTTP.Query = "", "", "", "", ""
		}
	}},
	{"http-path-only-no-destination", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Host, r.Destination = "", nil
		}
	}},
	{"http-host-no-port-no-path", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Host, r.HTTP.Path, r.HTTP.Partial, r.HTTP.DurationMS = "api.example.com", "", false, -5
		}
	}},
	{"http-ipv6-host", func(r *audit.Record) {
		if r.HTTP != nil && r.Destination != nil {
			r.HTTP.Host, r.Destination.Port = "[2001:db8::1]:8443", 443
		}
	}},
	{"http-bad-port", func(r *audit.Record) {
		if r.HTTP != nil {
			r.HTTP.Host = "api.example.com:99999"
		}
	}},
	{"no-tls-no-credential", func(r *audit.Record) { r.TLS, r.Credential = nil, nil }},
	{"tls-no-socket-credential-key-id", func(r *audit.Record) {
		if r.TLS != nil {
			r.TLS.Socket = false
			r.Credential = &audit.Credential{Type: "aws_sigv4", KeyID: "AKIAEXAMPLE"}
		}
	}},
	{"credential-type-only", func(r *audit.Record) {
		if r.Credential != nil {
			r.Credential = &audit.Credential{Type: "other"}
		}
	}},
	{"no-pod", func(r *audit.Record) { r.Pod = nil }},
	{"pod-uid-only", func(r *audit.Record) {
		if r.Pod != nil {
			r.Pod = &audit.Pod{UID: r.Pod.UID}
		}
	}},
}

// encodeTable is every kind crossed with every verdict and session event,
// full and with each optional part dropped, plus the records of
// ocsf_test.go and awkward strings in every field.
func encodeTable() []audit.Record {
	var out []audit.Record
	out = append(out, records()...)
	kinds := append(slices.Clone(allKinds), "", "future_kind")
	for _, k := range kinds {
		for _, v := range allVerdicts {
			for _, ev := range sessionEvents() {
				out = append(out, fullRecord(k, v, ev, "-x"))
			}
		}
		for i, d := range recordDrops {
			r := fullRecord(k, allVerdicts[i%len(allVerdicts)], "opened", "")
			d.drop(&r)
			out = append(out, r)
			r = fullRecord(k, allVerdicts[i%len(allVerdicts)], "revoked", "")
			d.drop(&r)
			r.Outcome = nil
			out = append(out, r)
		}
		for i, s := range awkward {
			out = append(out, fullRecord(k, allVerdicts[i%len(allVerdicts)], s, s))
			r := fullRecord(k, s, "closed", s)
			r.Schema, r.Host, r.Kind = s, s, k
			out = append(out, r)
		}
	}
	return out
}

// checkAppend checks one record through both entry points: Append, from
// pooled storage, writes after dst exactly what encoding/json writes for
// the Event that Event maps from fresh storage (so neither the serializer
// nor a pooled object left over from an earlier record can change a
// byte), and the event keeps the properties of invariants_test.go.
func checkAppend(t *testing.T, enc Encoder, r *audit.Record, name string) {
	t.Helper()
	ev := enc.Event(r)
	want := append([]byte("prefix"), jsonReference(t, &ev)...)
	got, err := enc.Append([]byte("prefix"), r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: Append differs from encoding/json:\n got %s\nwant %s", name, got, want)
	}
	if err := checkInvariants(r, enc.ProductVersion, got[len("prefix"):]); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, got)
	}
}

func TestAppendMatchesEncodingJSON(t *testing.T) {
	for _, pv := range []string{"", "0.1.0", "v<1>&\u2028\xff"} {
		enc := Encoder{ProductVersion: pv}
		for i, r := range encodeTable() {
			checkAppend(t, enc, &r, fmt.Sprintf("record %d (%s/%s/%q)", i, r.Kind, r.Event, pv))
		}
	}
}

// fullEvent sets every field of Event and of every object it reaches,
// including ones the mapping never fills (Rule.Desc) and values it never
// produces (negative numbers), so appendEvent is checked member by member.
func fullEvent(s string) Event {
	one, neg := 1, -2
	gid := uint32(0)
	proc := func(pid uint32) *Process {
		return &Process{
			PID: pid, TID: 2, Name: "n" + s, CmdLine: "c " + s,
			File: &File{Name: "f" + s, TypeID: -1, Type: "t" + s, Path: "/p/" + s, Hashes: []Fingerprint{
				{AlgorithmID: 3, Algorithm: "SHA-256", Value: "v" + s}, {AlgorithmID: -1, Algorithm: "a" + s, Value: "w" + s},
			}},
			User:          &User{UID: "u" + s, Name: "un" + s},
			ParentProcess: &Process{PID: 1, TID: 9, Name: s, ParentProcess: &Process{}},
			Lineage:       []string{s, "", "x"},
			Container:     &Container{UID: "cu" + s, PodUUID: "pu" + s, Orchestrator: "or" + s, Labels: []string{"la" + s, "lb"}},
		}
	}
	return Event{
		ActivityID: -1, ActivityName: "an" + s, CategoryUID: 1 << 40, CategoryName: "cn" + s,
		ClassUID: 3, ClassName: "cl" + s, TypeUID: 4, TypeName: "tn" + s, Time: -1 << 62,
		StartTime: -1 << 61, EndTime: 1 << 61, Duration: -7, Count: 1 << 63,
		SeverityID: 5, Severity: "sv" + s, Message: "m" + s, StatusID: -6, Status: "st" + s,
		StatusCode: "sc" + s, StatusDetail: "sd" + s, ActionID: &one, Action: "ac" + s,
		DispositionID: &neg, Disposition: "di" + s,
		Metadata: Metadata{
			Version: "1.3.0" + s, Product: Product{Name: "pn" + s, VendorName: "vn" + s, Version: "pv" + s},
			Profiles: []string{"host", s}, UID: "uid" + s, Sequence: 1<<64 - 1, CorrelationUID: "cu" + s, LogName: "ln" + s,
		},
		Actor:          &Actor{AppName: "app" + s, AppUID: "appu" + s, Process: proc(7), Session: &Session{UID: "su" + s, Issuer: "is" + s}, User: &User{UID: "x", Name: "n" + s}},
		Device:         &Device{TypeID: 9, Type: "dt" + s, Hostname: "dh" + s},
		Process:        proc(8),
		ExitCode:       &neg,
		DstEndpoint:    &Endpoint{IP: "ip" + s, Port: 1, Hostname: "eh" + s, Name: "en" + s},
		SrcEndpoint:    &Endpoint{IP: "si" + s, Port: 2, Hostname: "sh" + s, Name: "sn" + s},
		ConnectionInfo: &ConnectionInfo{DirectionID: 2, Direction: "d" + s, ProtocolName: "pn" + s, ProtocolNum: 17},
		HTTPRequest: &HTTPRequest{HTTPMethod: "hm" + s, Version: "hv" + s,
			URL: &URL{Hostname: "uh" + s, Path: "/up" + s, Port: 3, Scheme: "us" + s, URLString: "uu" + s}},
		HTTPResponse: &HTTPResponse{Code: -404},
		Traffic:      &NetworkTraffic{BytesIn: -1 << 62, BytesOut: 1 << 62},
		Query:        &DNSQuery{Hostname: "qh" + s, Type: "qt" + s},
		Entity: &ManagedEntity{UID: "eu" + s, Name: "en" + s, Type: "et" + s, Data: &SessionData{Mode: "mo" + s, Parent: "pa" + s, KeptCaps: []string{"kc" + s}, DNS: "dn" + s,
			GateCaps: []audit.HeldCaps{{PID: 7, Caps: []string{"gc" + s}}, {PID: 8, Caps: []string{"gd" + s, "ge"}}}}},
		FirewallRule: &Rule{Name: "rn" + s, Desc: "rd" + s},
		LogProvider:  "lp" + s,
		LogName:      "log" + s,
		Unmapped: &Unmapped{Agentfence: AgentfenceData{
			Schema: "sch" + s, Kind: "k" + s, Seq: 3, PrevHash: "ph" + s, Verdict: "ve" + s, Reason: "re" + s,
			Errno: "er" + s, HeldBy: "hb" + s, Event: "ev" + s, Intent: "in" + s, SessionMode: "sm" + s, ParentSession: "ps" + s,
			OriginKind: "ok" + s, OriginPrincipal: "op" + s, AgentVersion: "av" + s, AgentOwner: "ao" + s,
			GID: &gid, PPID: 4, CgroupID: 5, Cgroup: "cg" + s,
			Pod:         &PodData{Namespace: "pn" + s, Name: "pm" + s, ServiceAccount: "ps" + s, Node: "pd" + s},
			Gap:         &audit.Gap{Source: "gs" + s, Count: 6, FirstSeq: 7, LastSeq: 8},
			Destination: &Destination{Protocol: "pr" + s},
			Escape:      &audit.Escape{What: "wh" + s, Cgroup: "cg" + s, CgroupID: 9, ByPID: 10, ChildPID: 11, NetNS: 12, Via: "vi" + s, TargetPID: 13},
			Socket:      &audit.Socket{Family: "fa" + s, Type: "ty" + s, Protocol: 13, RefusedBy: "rb" + s},
			MCP:         &audit.MCP{Server: "sv" + s, Session: "se" + s, Serves: "sr" + s, Exe: "ex" + s, Script: "sc" + s, ScriptSHA256: "ss" + s},
			TLS:         &audit.TLS{Library: "tl" + s, Socket: true, Uncovered: "un" + s},
			Credential:  &audit.Credential{Type: "ct" + s, Header: "ch" + s, Fingerprint: "cf" + s, KeyID: "ck" + s, Holder: "co" + s},
			HTTPPartial: true,
			QueryHash:   "qh" + s,
		}},
	}
}

// assertAllSet fails for any zero field reachable from v, so a field added
// to Event or its objects without a test value (and likely without a line
// in appendEvent) does not go unnoticed.
func assertAllSet(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is nil", path)
			return
		}
		assertAllSet(t, path, v.Elem())
	case reflect.Struct:
		for i := range v.NumField() {
			assertAllSet(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			t.Errorf("%s is empty", path)
		}
		for i := range v.Len() {
			if v.Index(i).Kind() != reflect.String { // "" elements are intended
				assertAllSet(t, path, v.Index(i))
			}
		}
	default:
		if v.IsZero() && !strings.HasSuffix(path, "GID") {
			t.Errorf("%s is zero", path)
		}
	}
}

func TestAppendEventMatchesEncodingJSON(t *testing.T) {
	ev := fullEvent("")
	top := reflect.ValueOf(ev)
	for i := range top.NumField() {
		f := top.Field(i)
		if f.Kind() == reflect.Pointer && !f.IsNil() && f.Elem().Kind() == reflect.Struct {
			// Nested processes deliberately stop with an empty one.
			if f.Type().Elem() == reflect.TypeFor[Process]() || f.Type().Elem() == reflect.TypeFor[Actor]() {
				continue
			}
		}
		assertAllSet(t, "Event."+top.Type().Field(i).Name, f)
	}
	assertAllSet(t, "Event.Process.File", reflect.ValueOf(ev.Process.File))
	assertAllSet(t, "Event.Process.User", reflect.ValueOf(ev.Process.User))
	assertAllSet(t, "Event.Process.Container", reflect.ValueOf(ev.Process.Container))
	assertAllSet(t, "Event.Actor.Session", reflect.ValueOf(ev.Actor.Session))
	assertAllSet(t, "Event.Actor.User", reflect.ValueOf(ev.Actor.User))

	for _, s := range awkward {
		variants := []Event{fullEvent(s), {}}
		// Every optional object present but empty.
		empty := fullEvent(s)
		empty.Actor = &Actor{}
		empty.Process = &Process{File: &File{Hashes: []Fingerprint{{}, {Algorithm: s}}}, User: &User{}, Container: &Container{}, ParentProcess: &Process{}, Lineage: []string{}}
		empty.DstEndpoint, empty.SrcEndpoint, empty.ConnectionInfo, empty.Query = &Endpoint{}, &Endpoint{}, &ConnectionInfo{}, &DNSQuery{}
		empty.HTTPRequest, empty.HTTPResponse, empty.Traffic = &HTTPRequest{URL: &URL{}}, &HTTPResponse{}, &NetworkTraffic{}
		empty.Entity, empty.FirewallRule, empty.Device = &ManagedEntity{Data: &SessionData{KeptCaps: []string{}}}, &Rule{}, &Device{}
		empty.Unmapped = &Unmapped{Agentfence: AgentfenceData{Gap: &audit.Gap{}, Destination: &Destination{}, Escape: &audit.Escape{}, Socket: &audit.Socket{}, MCP: &audit.MCP{},
			TLS: &audit.TLS{}, Credential: &audit.Credential{}}}
		empty.Metadata = Metadata{Profiles: []string{}}
		variants = append(variants, empty)
		for i, ev := range variants {
			if got, want := appendEvent(nil, &ev), jsonReference(t, &ev); !bytes.Equal(got, want) {
				t.Fatalf("variant %d, %q:\n got %s\nwant %s", i, s, got, want)
			}
		}
	}
}

// FuzzOCSFMatchesReference builds records from fuzzed strings and numbers
// and checks Append against encoding/json's encoding of Event byte for
// byte, twice in a row (the second from a pooled scratch the first used),
// and the event against the record it came from (invariants_test.go). The
// seed corpus is in testdata/fuzz/FuzzOCSFMatchesReference.
func FuzzOCSFMatchesReference(f *testing.F) {
	f.Add(uint8(0), uint32(0xffffffff), "a<b>&c", "\xff\u2028", "x\x00\n\"\\", "ok", uint64(42), uint32(10), int64(1772366400123), uint16(443))
	f.Fuzz(func(t *testing.T, kind uint8, flags uint32, a, b, c, d string, n uint64, m uint32, ms int64, port uint16) {
		r := fuzzRecord(kind, flags, a, b, c, d, n, m, ms, port)
		enc := Encoder{ProductVersion: d}
		checkAppend(t, enc, &r, fmt.Sprintf("%+v", r))
		checkAppend(t, enc, &r, fmt.Sprintf("%+v (again)", r))
	})
}

// fuzzRecord spreads the fuzzed values over a record: kind's low four bits
// pick the kind (or use a), its high four the session event (or use b),
// flags the verdict and which optional parts are present, and the four
// strings rotate through every string member.
func fuzzRecord(kind uint8, flags uint32, a, b, c, d string, n uint64, m uint32, ms int64, port uint16) audit.Record {
	strs := [4]string{a, b, c, d}
	next := int(flags >> 28)
	s := func() string { next++; return strs[next%4] }
	bit := func(i uint) bool { return flags&(1<<i) != 0 }

	r := audit.Record{Schema: s(), Time: time.UnixMilli(ms), Seq: n, PrevHash: s(), Host: s(), Actor: s()}
	// Not a modulus of len(allKinds): a kind added would move every seed
	// past the old end.
	if k := int(kind & 0x0f); k < len(allKinds) {
		r.Kind = allKinds[k]
	} else {
		r.Kind = a
	}
	evs := sessionEvents()
	if e := int(kind>>4) % (len(evs) + 1); e < len(evs) {
		r.Event = evs[e]
	} else {
		r.Event = b
	}
	if bit(0) {
		r.Session = &audit.Session{ID: s(), Intent: s(), Mode: s(), Parent: s()}
		if bit(16) {
			r.Session.KeptCaps = []string{s(), s()}
		}
		if bit(21) {
			r.Session.DNS = s()
			r.Session.GateCaps = []audit.HeldCaps{{PID: m, Caps: []string{s()}}, {PID: uint32(n)}}
		}
	}
	if bit(1) {
		r.Agent = &audit.Agent{ID: s(), Name: s(), Version: s(), Owner: s()}
	}
	if bit(2) {
		r.Origin = &audit.Origin{Kind: s(), Principal: s()}
	}
	if bit(3) {
		p := &audit.Process{
			PID: m, TID: m >> 3, UID: uint32(n), GID: uint32(n >> 32), Comm: s(),
			Exe: s(), SHA256: s(), CgroupID: n >> 1, Cgroup: s(), ContainerID: s(), PodUID: s(),
		}
		if bit(4) {
			p.PPID = m ^ 0x5555
		}
		if bit(5) {
			p.Argv = strings.Split(s(), " ")
		}
		if bit(6) {
			p.Ancestry = strings.Split(s(), "/")
		}
		if bit(7) {
			x := int(int32(m))
			p.ExitCode = &x
		}
		r.Process = p
	}
	if bit(8) {
		protos := []string{"tcp", "udp", "", s()}
		r.Destination = &audit.Destination{IP: s(), Port: port, Protocol: protos[(flags>>9)%4], Hostname: s()}
	}
	if bit(11) {
		o := &audit.Outcome{Rule: s(), Reason: s(), Errno: s()}
		if v := int(flags>>12) % (len(allVerdicts) + 1); v < len(allVerdicts) {
			o.Verdict = allVerdicts[v]
		} else {
			o.Verdict = s()
		}
		r.Outcome = o
	}
	if bit(15) {
		r.Gap = &audit.Gap{Source: s(), Count: n >> 2, FirstSeq: uint64(m), LastSeq: uint64(port)}
	}
	if bit(17) {
		r.Source = &audit.Destination{IP: s(), Port: port ^ 0x8000, Protocol: s()}
	}
	if bit(18) {
		r.Socket = &audit.Socket{Family: s(), Type: s(), Protocol: int(int32(m)), RefusedBy: s()}
	}
	if bit(19) {
		r.Escape = &audit.Escape{What: s(), Cgroup: s(), CgroupID: n, ByPID: m >> 1, ChildPID: m, NetNS: n >> 3, Via: s(), TargetPID: uint32(port)}
	}
	if bit(20) {
		r.Query = &audit.Query{Name: s(), Type: s(), Truncated: bit(22)}
	}
	if bit(23) {
		r.MCP = &audit.MCP{Server: s(), Session: s(), Serves: s(), Exe: s(), Script: s(), ScriptSHA256: s()}
	}
	if bit(24) && r.Outcome != nil {
		r.Outcome.HeldBy = s()
	}
	if bit(25) {
		methods := []string{"GET", "PATCH", "", s()}
		r.HTTP = &audit.HTTP{Method: methods[(flags>>9)%4], Host: s(), Path: s(), Query: s(), Status: int(int32(m)), Version: s(),
			RequestBytes: int64(n), ResponseBytes: int64(m), DurationMS: int64(int16(port)), Partial: bit(22)}
	}
	if bit(26) {
		r.TLS = &audit.TLS{Library: s(), Socket: bit(4)}
	}
	if bit(27) {
		r.Credential = &audit.Credential{Type: s(), Header: s(), Fingerprint: s(), KeyID: s(), Holder: s()}
	}
	return r
}
