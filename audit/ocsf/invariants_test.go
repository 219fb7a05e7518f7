package ocsf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/agentfence/agentfence/audit"
)

// What must hold of a record's OCSF event whatever the record holds,
// checked on the decoded JSON against the record itself: the class each
// kind maps to and the identifiers derived from it, the required
// attributes, and the record's own values where the mapping carries them
// over. The golden files pin every value for a table of records; these
// properties are what fuzzed records can be held to. The names and
// numbers here are OCSF 1.3.0's and docs/audit.md's, written out again on
// purpose: a test that read them from ocsf.go's tables would follow a
// wrong edit there.

var (
	wantCategoryName = map[int]string{1: "System Activity", 3: "Identity & Access Management", 4: "Network Activity"}
	wantClassName    = map[int]string{
		1007: "Process Activity", 1008: "Event Log Activity", 3004: "Entity Management",
		4001: "Network Activity", 4002: "HTTP Activity", 4003: "DNS Activity",
	}
	// wantHTTPActivity is HTTP Activity's activity_id by method; any
	// other method is 99, named as written, and none 0 Unknown.
	wantHTTPActivity = map[string]int{"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7, "TRACE": 8}
	wantSeverityName = map[int]string{1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
)

// wantClass is the class_uid a record kind maps to.
func wantClass(kind string) int {
	switch kind {
	case audit.KindConnect, audit.KindSendmsg, audit.KindSocket, audit.KindDestroy, audit.KindBind, audit.KindInbound:
		return 4001
	case audit.KindHTTP:
		return 4002
	case audit.KindDNS:
		return 4003
	case audit.KindExec, audit.KindEscape, audit.KindMCP:
		return 1007
	case audit.KindSession, audit.KindAgent:
		return 3004
	default: // gap, and kinds this build does not know
		return 1008
	}
}

// wantControl is the security_control profile's action and disposition
// for a verdict.
func wantControl(verdict string) (action int, actionName string, disp int, dispName string) {
	switch verdict {
	case audit.VerdictAllowed:
		return 1, "Allowed", 1, "Allowed"
	case audit.VerdictDenied, audit.VerdictDestroyed:
		return 2, "Denied", 2, "Blocked"
	case audit.VerdictWouldDeny, audit.VerdictFlagged, audit.VerdictDetected:
		return 1, "Allowed", 15, "Detected"
	}
	return 0, "Unknown", 0, "Unknown"
}

type eventCheck struct {
	m    map[string]any
	errs []error
}

func (c *eventCheck) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// text is the JSON text of a member's value: a string's contents, a
// number's digits (decoded with UseNumber, so uint64 values stay exact).
func (c *eventCheck) text(path string) (string, bool) {
	v, ok := lookup(c.m, path)
	if !ok {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	}
	return fmt.Sprint(v), true
}

func (c *eventCheck) number(path string) int {
	s, _ := c.text(path)
	n, err := strconv.Atoi(s)
	if err != nil {
		c.errorf("%s: %q is not an integer", path, s)
	}
	return n
}

// decoded is s as it reads back from JSON: each byte of invalid UTF-8
// became U+FFFD, as converting to runes does.
func decoded(s string) string { return string([]rune(s)) }

// eq wants path present with the value want.
func (c *eventCheck) eq(path string, want any) {
	got, ok := c.text(path)
	if !ok {
		c.errorf("%s missing, want %v", path, want)
	} else if w := decoded(fmt.Sprint(want)); got != w {
		c.errorf("%s = %q, want %q", path, got, w)
	}
}

// opt wants path absent when want is its zero value (omitempty), else eq.
func (c *eventCheck) opt(path string, want any) {
	if reflect.ValueOf(want).IsZero() {
		c.absent(path)
		return
	}
	c.eq(path, want)
}

func (c *eventCheck) absent(path string) {
	if v, ok := lookup(c.m, path); ok {
		c.errorf("%s = %v, want it absent", path, v)
	}
}

func (c *eventCheck) present(path string, want bool) {
	if _, ok := lookup(c.m, path); ok != want {
		c.errorf("%s present: %v, want %v", path, ok, want)
	}
}

// checkInvariants checks b, the encoding of r's event with productVersion
// in metadata.product.version.
func checkInvariants(r *audit.Record, productVersion string, b []byte) error {
	if !json.Valid(b) {
		return errors.New("not valid JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	c := &eventCheck{}
	if err := dec.Decode(&c.m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	for _, v := range schemaViolations(c.m, false) {
		c.errorf("%s", v)
	}

	class := wantClass(r.Kind)
	c.eq("class_uid", class)
	c.eq("class_name", wantClassName[class])
	c.eq("category_uid", categoryOf[class])
	c.eq("category_name", wantCategoryName[categoryOf[class]])
	activity := c.number("activity_id")
	activityName, _ := c.text("activity_name")
	c.eq("type_uid", class*100+activity)
	c.eq("type_name", wantClassName[class]+": "+activityName)
	sev := c.number("severity_id")
	if _, ok := wantSeverityName[sev]; !ok {
		c.errorf("severity_id %d", sev)
	}
	c.eq("severity", wantSeverityName[sev])
	c.eq("time", r.Time.UnixMilli())

	c.eq("metadata.version", SchemaVersion)
	c.eq("metadata.product.name", "agentfence")
	c.eq("metadata.product.vendor_name", "agentfence")
	c.opt("metadata.product.version", productVersion)
	c.eq("metadata.log_name", "audit")
	c.opt("metadata.sequence", r.Seq)
	if r.Seq != 0 {
		c.eq("metadata.uid", r.Host+":"+strconv.FormatUint(r.Seq, 10))
	} else {
		c.absent("metadata.uid")
	}
	if r.Session != nil {
		c.opt("metadata.correlation_uid", r.Session.ID)
	} else {
		c.absent("metadata.correlation_uid")
	}

	c.checkUnmapped(r, class)
	c.checkControl(r, class)
	c.checkSubject(r, class)

	if msg, ok := c.text("message"); ok {
		if !strings.HasPrefix(msg, decoded(r.Kind)) {
			c.errorf("message %q does not start with the kind", msg)
		}
		if p := r.Process; p != nil && !strings.Contains(msg, decoded(" by "+p.Comm+"["+strconv.FormatUint(uint64(p.PID), 10)+"]")) {
			c.errorf("message %q does not name the process", msg)
		}
		if m := r.MCP; m != nil && !strings.HasSuffix(msg, decoded(" server "+m.Server)) {
			c.errorf("message %q does not name the MCP server", msg)
		}
	}
	return errors.Join(c.errs...)
}

// orZero is *p, or T's zero value for a part the record lacks.
func orZero[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// checkUnmapped: unmapped.agentfence carries the record's own values.
func (c *eventCheck) checkUnmapped(r *audit.Record, class int) {
	const u = "unmapped.agentfence."
	c.eq(u+"schema", r.Schema)
	c.eq(u+"kind", r.Kind)
	c.opt(u+"seq", r.Seq)
	c.opt(u+"prev_hash", r.PrevHash)
	c.opt(u+"event", r.Event)
	o, s, og, ag := orZero(r.Outcome), orZero(r.Session), orZero(r.Origin), orZero(r.Agent)
	for _, m := range []struct {
		path string
		want string
	}{
		{"verdict", o.Verdict}, {"reason", o.Reason}, {"errno", o.Errno}, {"held_by", o.HeldBy},
		{"intent", s.Intent}, {"session_mode", s.Mode}, {"parent_session", s.Parent},
		{"origin_kind", og.Kind}, {"origin_principal", og.Principal},
		{"agent_version", ag.Version}, {"agent_owner", ag.Owner},
	} {
		c.opt(u+m.path, m.want)
	}
	if p := r.Process; p != nil {
		c.eq(u+"gid", p.GID) // present even when 0: root's group
		c.opt(u+"ppid", p.PPID)
		c.opt(u+"cgroup_id", p.CgroupID)
		c.opt(u+"cgroup", p.Cgroup)
	} else {
		c.absent(u + "gid")
	}
	c.present(u+"pod", r.Pod != nil)
	if pod := r.Pod; pod != nil {
		c.opt(u+"pod.namespace", pod.Namespace)
		c.opt(u+"pod.name", pod.Name)
		c.opt(u+"pod.service_account", pod.ServiceAccount)
		c.opt(u+"pod.node", pod.Node)
	}
	c.present(u+"gap", r.Kind == audit.KindGap && r.Gap != nil)
	if r.Kind == audit.KindGap && r.Gap != nil {
		c.eq(u+"gap.source", r.Gap.Source)
		c.eq(u+"gap.count", r.Gap.Count)
		c.eq("status_detail", "lost "+strconv.FormatUint(r.Gap.Count, 10)+" records")
	}
	c.present(u+"escape", r.Kind == audit.KindEscape && r.Escape != nil)
	if r.Kind == audit.KindEscape && r.Escape != nil {
		c.eq(u+"escape.what", r.Escape.What)
		c.opt(u+"escape.target_pid", r.Escape.TargetPID)
	}
	c.present(u+"mcp", r.MCP != nil) // whatever the kind: any record of a server's process
	if m := r.MCP; m != nil {
		c.eq(u+"mcp.server", m.Server)
		c.opt(u+"mcp.session", m.Session)
		c.opt(u+"mcp.serves", m.Serves)
		c.opt(u+"mcp.exe", m.Exe)
		c.opt(u+"mcp.script", m.Script)
		c.opt(u+"mcp.script_sha256", m.ScriptSHA256)
	}
	isHTTP := r.Kind == audit.KindHTTP
	hasTLS := (isHTTP || r.Kind == audit.KindTLSUncovered) && r.TLS != nil
	c.present(u+"tls", hasTLS)
	if t := r.TLS; hasTLS {
		c.eq(u+"tls.library", t.Library)
		c.eq(u+"tls.socket", t.Socket)
		c.opt(u+"tls.uncovered", t.Uncovered)
	}
	c.present(u+"credential", isHTTP && r.Credential != nil)
	if cr := r.Credential; isHTTP && cr != nil {
		c.eq(u+"credential.type", cr.Type)
		c.opt(u+"credential.header", cr.Header)
		c.opt(u+"credential.fingerprint", cr.Fingerprint)
		c.opt(u+"credential.key_id", cr.KeyID)
		c.opt(u+"credential.holder", cr.Holder)
	}
	h := orZero(r.HTTP)
	if !isHTTP {
		h = audit.HTTP{}
	}
	c.opt(u+"http_partial", h.Partial)
	c.opt(u+"query_hash", h.Query)
	c.present(u+"socket", class == 4001 && r.Socket != nil)
	if class == 4001 && r.Socket != nil {
		c.eq(u+"socket.family", r.Socket.Family)
		c.eq(u+"socket.protocol", r.Socket.Protocol)
	}
}

// checkControl: the security_control profile (action, disposition) comes
// with every verdict-bearing class, from the outcome's verdict.
func (c *eventCheck) checkControl(r *audit.Record, class int) {
	profiles, _ := lookup(c.m, "metadata.profiles")
	has := func(p string) bool {
		l, _ := profiles.([]any)
		return slices.Contains(l, any(p))
	}
	container := r.Process != nil && (r.Process.ContainerID != "" || r.Process.PodUID != "")
	if has("container") != container {
		c.errorf("profile container: %v, want %v", has("container"), container)
	}
	host := class == 4001 || class == 4002 || class == 4003 || class == 1007
	if has("host") != host {
		c.errorf("profile host: %v, want %v", has("host"), host)
	}
	control := class == 4001 || class == 4002 || class == 4003 || r.Kind == audit.KindEscape || r.Kind == audit.KindMCP ||
		(r.Kind == audit.KindExec && r.Outcome != nil)
	if has("security_control") != control {
		c.errorf("profile security_control: %v, want %v", has("security_control"), control)
	}
	c.present("action_id", control)
	c.present("disposition_id", control)
	if !control {
		return
	}
	o := orZero(r.Outcome)
	act, actName, disp, dispName := wantControl(o.Verdict)
	c.eq("action_id", act)
	c.eq("action", actName)
	c.eq("disposition_id", disp)
	c.eq("disposition", dispName)
	c.opt("status_code", o.Errno)
	c.opt("status_detail", o.Reason)
	c.opt("firewall_rule.name", o.Rule)
}

// checkSubject: the process, the endpoints, the query and the entity come
// from the record's parts.
func (c *eventCheck) checkSubject(r *audit.Record, class int) {
	p := orZero(r.Process)
	switch class {
	case 1007: // the process is the subject, the actor who acted on it
		c.present("process", true)
		c.opt("process.pid", p.PID)
		c.opt("process.name", p.Comm)
		c.opt("process.file.path", p.Exe)
		c.present("actor", true)
		c.present("device", true)
		if r.Kind == audit.KindMCP || (r.Kind == audit.KindExec && p.ExitCode == nil) {
			// A launch, by the parent that called execve.
			c.eq("activity_id", 1)
			c.eq("activity_name", "Launch")
			if p.PPID != 0 {
				c.eq("actor.process.pid", p.PPID)
			}
		}
	case 4001, 4002, 4003, 1008:
		if r.Process != nil && r.Kind != audit.KindGap {
			c.opt("actor.process.pid", p.PID)
			c.opt("actor.process.file.path", p.Exe)
			c.eq("actor.process.user.uid", p.UID)
		}
	}
	if r.Session != nil && r.Kind != audit.KindGap {
		c.eq("actor.session.uid", r.Session.ID)
	}
	switch class {
	case 4001:
		c.present("dst_endpoint", true)
		if d := r.Destination; d != nil {
			c.opt("dst_endpoint.ip", d.IP)
			c.opt("dst_endpoint.port", d.Port)
			c.opt("dst_endpoint.hostname", d.Hostname)
			c.opt("connection_info.protocol_name", d.Protocol)
			c.eq("connection_info.direction", map[bool]string{true: "Inbound", false: "Outbound"}[r.Source != nil])
		}
		c.present("src_endpoint", r.Source != nil)
		if s := r.Source; s != nil {
			c.opt("src_endpoint.ip", s.IP)
			c.opt("src_endpoint.port", s.Port)
		}
	case 4002:
		c.checkHTTP(r)
	case 4003:
		switch {
		case r.Query != nil:
			c.eq("query.hostname", r.Query.Name)
			c.opt("query.type", r.Query.Type)
		case r.Destination != nil && r.Destination.Hostname != "":
			c.eq("query.hostname", r.Destination.Hostname)
		default:
			c.absent("query")
		}
	case 3004:
		switch {
		case r.Kind == audit.KindAgent:
			c.eq("entity.type", "Agent")
			if r.Agent != nil {
				c.eq("entity.uid", r.Agent.ID)
				c.opt("entity.name", r.Agent.Name)
			}
		default:
			c.eq("entity.type", "Intent Session")
			if r.Session != nil {
				c.eq("entity.uid", r.Session.ID)
				c.opt("entity.name", r.Session.Intent)
			}
		}
		c.opt("actor.user.name", r.Actor)
		c.eq("status", "Success")
	}
}

// checkHTTP: an http record's call is the event's activity, request and
// response; its connection is the dst_endpoint as on a connect.
func (c *eventCheck) checkHTTP(r *audit.Record) {
	c.present("dst_endpoint", true)
	if d := r.Destination; d != nil {
		c.opt("dst_endpoint.ip", d.IP)
		c.opt("dst_endpoint.port", d.Port)
		c.opt("dst_endpoint.hostname", d.Hostname)
		c.opt("connection_info.protocol_name", d.Protocol)
		c.eq("connection_info.direction", "Outbound")
	}
	c.absent("src_endpoint")
	c.present("http_request", true)
	c.present("http_response", true)
	h := orZero(r.HTTP)
	switch id, known := wantHTTPActivity[h.Method]; {
	case known:
		c.eq("activity_id", id)
	case h.Method == "":
		c.eq("activity_id", 0)
		c.eq("activity_name", "Unknown")
	default:
		c.eq("activity_id", 99)
		c.eq("activity_name", h.Method)
	}
	c.opt("http_request.http_method", h.Method)
	c.opt("http_request.version", h.Version)
	c.opt("http_request.url.path", h.Path)
	c.absent("http_request.url.query_string") // a hash is no query
	if _, ok := lookup(c.m, "http_request.url"); ok {
		c.eq("http_request.url.scheme", "https")
		if h.Host != "" {
			c.eq("http_request.url.url_string", "https://"+h.Host+h.Path)
		}
	} else if h.Host != "" || h.Path != "" {
		c.errorf("http_request.url missing for host %q path %q", h.Host, h.Path)
	}
	c.opt("http_response.code", h.Status)
	c.present("traffic", r.HTTP != nil)
	if r.HTTP != nil {
		c.eq("traffic.bytes_out", h.RequestBytes)
		c.eq("traffic.bytes_in", h.ResponseBytes)
		d := max(h.DurationMS, 0)
		c.opt("duration", d)
		c.opt("start_time", r.Time.UnixMilli())
		c.opt("end_time", r.Time.UnixMilli()+d)
	} else {
		c.absent("start_time")
		c.absent("duration")
	}
}
