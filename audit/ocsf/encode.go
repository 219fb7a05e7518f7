package ocsf

import (
	"strconv"
	"unicode/utf8"

	"github.com/agentfence/agentfence/audit"
)

// This file is a hand-written JSON serializer for Event. It must produce
// exactly the bytes encoding/json produces for the same value with HTML
// escaping off (json.Encoder.SetEscapeHTML(false), no trailing newline):
// members in struct field order, omitempty as encoding/json applies it
// (zero numbers, empty strings and slices, nil pointers; a non-nil pointer
// to an empty struct is "{}"), and strings escaped as encodeState does.
// encode_test.go compares it with encoding/json on a table of records and
// under fuzzing (FuzzOCSFMatchesReference); any change to a struct or its
// tags in ocsf.go needs the same change here, and a change of output a
// rewrite of testdata/golden (go test -run TestGolden -update).

// appendEvent appends the JSON encoding of ev to dst.
func appendEvent(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"activity_id":`...)
	dst = strconv.AppendInt(dst, int64(ev.ActivityID), 10)
	dst = appendOptString(dst, `,"activity_name":`, ev.ActivityName)
	dst = append(dst, `,"category_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.CategoryUID), 10)
	dst = appendOptString(dst, `,"category_name":`, ev.CategoryName)
	dst = append(dst, `,"class_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.ClassUID), 10)
	dst = appendOptString(dst, `,"class_name":`, ev.ClassName)
	dst = append(dst, `,"type_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.TypeUID), 10)
	dst = appendOptString(dst, `,"type_name":`, ev.TypeName)
	dst = append(dst, `,"time":`...)
	dst = strconv.AppendInt(dst, ev.Time, 10)
	dst = appendOptInt(dst, `,"start_time":`, ev.StartTime)
	dst = appendOptInt(dst, `,"end_time":`, ev.EndTime)
	dst = appendOptInt(dst, `,"duration":`, ev.Duration)
	if ev.Count != 0 {
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendUint(dst, ev.Count, 10)
	}
	dst = append(dst, `,"severity_id":`...)
	dst = strconv.AppendInt(dst, int64(ev.SeverityID), 10)
	dst = appendOptString(dst, `,"severity":`, ev.Severity)
	dst = appendOptString(dst, `,"message":`, ev.Message)
	dst = appendOptInt(dst, `,"status_id":`, int64(ev.StatusID))
	dst = appendOptString(dst, `,"status":`, ev.Status)
	dst = appendOptString(dst, `,"status_code":`, ev.StatusCode)
	dst = appendOptString(dst, `,"status_detail":`, ev.StatusDetail)
	if ev.ActionID != nil {
		dst = append(dst, `,"action_id":`...)
		dst = strconv.AppendInt(dst, int64(*ev.ActionID), 10)
	}
	dst = appendOptString(dst, `,"action":`, ev.Action)
	if ev.DispositionID != nil {
		dst = append(dst, `,"disposition_id":`...)
		dst = strconv.AppendInt(dst, int64(*ev.DispositionID), 10)
	}
	dst = appendOptString(dst, `,"disposition":`, ev.Disposition)
	dst = append(dst, `,"metadata":`...)
	dst = appendMetadata(dst, &ev.Metadata)
	if ev.Actor != nil {
		dst = append(dst, `,"actor":`...)
		dst = appendActor(dst, ev.Actor)
	}
	if d := ev.Device; d != nil {
		dst = append(dst, `,"device":{"type_id":`...)
		dst = strconv.AppendInt(dst, int64(d.TypeID), 10)
		dst = appendOptString(dst, `,"type":`, d.Type)
		dst = appendOptString(dst, `,"hostname":`, d.Hostname)
		dst = append(dst, '}')
	}
	if ev.Process != nil {
		dst = append(dst, `,"process":`...)
		dst = appendProcess(dst, ev.Process)
	}
	if ev.ExitCode != nil {
		dst = append(dst, `,"exit_code":`...)
		dst = strconv.AppendInt(dst, int64(*ev.ExitCode), 10)
	}
	dst = appendEndpoint(dst, `,"dst_endpoint":{`, ev.DstEndpoint)
	dst = appendEndpoint(dst, `,"src_endpoint":{`, ev.SrcEndpoint)
	if c := ev.ConnectionInfo; c != nil {
		dst = append(dst, `,"connection_info":{"direction_id":`...)
		dst = strconv.AppendInt(dst, int64(c.DirectionID), 10)
		dst = appendOptString(dst, `,"direction":`, c.Direction)
		dst = appendOptString(dst, `,"protocol_name":`, c.ProtocolName)
		dst = appendOptInt(dst, `,"protocol_num":`, int64(c.ProtocolNum))
		dst = append(dst, '}')
	}
	if q := ev.HTTPRequest; q != nil {
		dst = append(dst, `,"http_request":{`...)
		dst = appendOptString(dst, `,"http_method":`, q.HTTPMethod)
		if u := q.URL; u != nil {
			dst = appendKey(dst, `,"url":{`)
			dst = appendOptString(dst, `,"hostname":`, u.Hostname)
			dst = appendOptString(dst, `,"path":`, u.Path)
			dst = appendOptUint(dst, `,"port":`, uint64(u.Port))
			dst = appendOptString(dst, `,"scheme":`, u.Scheme)
			dst = appendOptString(dst, `,"url_string":`, u.URLString)
			dst = append(dst, '}')
		}
		dst = appendOptString(dst, `,"version":`, q.Version)
		dst = append(dst, '}')
	}
	if p := ev.HTTPResponse; p != nil {
		dst = append(dst, `,"http_response":{`...)
		dst = appendOptInt(dst, `,"code":`, int64(p.Code))
		dst = append(dst, '}')
	}
	if t := ev.Traffic; t != nil {
		dst = append(dst, `,"traffic":{"bytes_in":`...)
		dst = strconv.AppendInt(dst, t.BytesIn, 10)
		dst = append(dst, `,"bytes_out":`...)
		dst = strconv.AppendInt(dst, t.BytesOut, 10)
		dst = append(dst, '}')
	}
	if q := ev.Query; q != nil {
		dst = append(dst, `,"query":{"hostname":`...)
		dst = appendString(dst, q.Hostname)
		dst = appendOptString(dst, `,"type":`, q.Type)
		dst = append(dst, '}')
	}
	if m := ev.Entity; m != nil {
		dst = append(dst, `,"entity":{"uid":`...)
		dst = appendString(dst, m.UID)
		dst = appendOptString(dst, `,"name":`, m.Name)
		dst = appendOptString(dst, `,"type":`, m.Type)
		if d := m.Data; d != nil {
			dst = append(dst, `,"data":{`...)
			dst = appendOptString(dst, `,"mode":`, d.Mode)
			dst = appendOptString(dst, `,"parent":`, d.Parent)
			if len(d.KeptCaps) > 0 {
				dst = appendKey(dst, `,"kept_caps":`)
				dst = appendStrings(dst, d.KeptCaps)
			}
			dst = appendOptString(dst, `,"dns":`, d.DNS)
			if len(d.GateCaps) > 0 {
				dst = appendKey(dst, `,"gate_caps":`)
				dst = append(dst, '[')
				for i, h := range d.GateCaps {
					if i > 0 {
						dst = append(dst, ',')
					}
					dst = append(dst, `{"pid":`...)
					dst = strconv.AppendUint(dst, uint64(h.PID), 10)
					if dst = append(dst, `,"caps":`...); h.Caps == nil {
						dst = append(dst, "null"...)
					} else {
						dst = appendStrings(dst, h.Caps)
					}
					dst = append(dst, '}')
				}
				dst = append(dst, ']')
			}
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	if f := ev.FirewallRule; f != nil {
		dst = append(dst, `,"firewall_rule":{`...)
		dst = appendOptString(dst, `,"name":`, f.Name)
		dst = appendOptString(dst, `,"desc":`, f.Desc)
		dst = append(dst, '}')
	}
	dst = appendOptString(dst, `,"log_provider":`, ev.LogProvider)
	dst = appendOptString(dst, `,"log_name":`, ev.LogName)
	if ev.Unmapped != nil {
		dst = append(dst, `,"unmapped":{"agentfence":`...)
		dst = appendAgentfence(dst, &ev.Unmapped.Agentfence)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendMetadata(dst []byte, m *Metadata) []byte {
	dst = append(dst, `{"version":`...)
	dst = appendString(dst, m.Version)
	dst = append(dst, `,"product":{"name":`...)
	dst = appendString(dst, m.Product.Name)
	dst = append(dst, `,"vendor_name":`...)
	dst = appendString(dst, m.Product.VendorName)
	dst = appendOptString(dst, `,"version":`, m.Product.Version)
	dst = append(dst, '}')
	if len(m.Profiles) > 0 {
		dst = append(dst, `,"profiles":`...)
		dst = appendStrings(dst, m.Profiles)
	}
	dst = appendOptString(dst, `,"uid":`, m.UID)
	dst = appendOptUint(dst, `,"sequence":`, m.Sequence)
	dst = appendOptString(dst, `,"correlation_uid":`, m.CorrelationUID)
	dst = appendOptString(dst, `,"log_name":`, m.LogName)
	return append(dst, '}')
}

func appendActor(dst []byte, a *Actor) []byte {
	dst = append(dst, '{')
	dst = appendOptString(dst, `,"app_name":`, a.AppName)
	dst = appendOptString(dst, `,"app_uid":`, a.AppUID)
	if a.Process != nil {
		dst = appendKey(dst, `,"process":`)
		dst = appendProcess(dst, a.Process)
	}
	if s := a.Session; s != nil {
		dst = appendKey(dst, `,"session":{"uid":`)
		dst = appendString(dst, s.UID)
		dst = appendOptString(dst, `,"issuer":`, s.Issuer)
		dst = append(dst, '}')
	}
	if a.User != nil {
		dst = appendKey(dst, `,"user":`)
		dst = appendUser(dst, a.User)
	}
	return append(dst, '}')
}

func appendUser(dst []byte, u *User) []byte {
	dst = append(dst, '{')
	dst = appendOptString(dst, `,"uid":`, u.UID)
	dst = appendOptString(dst, `,"name":`, u.Name)
	return append(dst, '}')
}

func appendProcess(dst []byte, p *Process) []byte {
	dst = append(dst, '{')
	dst = appendOptUint(dst, `,"pid":`, uint64(p.PID))
	dst = appendOptUint(dst, `,"tid":`, uint64(p.TID))
	dst = appendOptString(dst, `,"name":`, p.Name)
	dst = appendOptString(dst, `,"cmd_line":`, p.CmdLine)
	if f := p.File; f != nil {
		dst = appendKey(dst, `,"file":{"name":`)
		dst = appendString(dst, f.Name)
		dst = append(dst, `,"type_id":`...)
		dst = strconv.AppendInt(dst, int64(f.TypeID), 10)
		dst = appendOptString(dst, `,"type":`, f.Type)
		dst = appendOptString(dst, `,"path":`, f.Path)
		if len(f.Hashes) > 0 {
			dst = append(dst, `,"hashes":[`...)
			for i := range f.Hashes {
				h := &f.Hashes[i]
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"algorithm_id":`...)
				dst = strconv.AppendInt(dst, int64(h.AlgorithmID), 10)
				dst = appendOptString(dst, `,"algorithm":`, h.Algorithm)
				dst = append(dst, `,"value":`...)
				dst = appendString(dst, h.Value)
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		}
		dst = append(dst, '}')
	}
	if p.User != nil {
		dst = appendKey(dst, `,"user":`)
		dst = appendUser(dst, p.User)
	}
	if p.ParentProcess != nil {
		dst = appendKey(dst, `,"parent_process":`)
		dst = appendProcess(dst, p.ParentProcess)
	}
	if len(p.Lineage) > 0 {
		dst = appendKey(dst, `,"lineage":`)
		dst = appendStrings(dst, p.Lineage)
	}
	if c := p.Container; c != nil {
		dst = appendKey(dst, `,"container":{`)
		dst = appendOptString(dst, `,"uid":`, c.UID)
		dst = appendOptString(dst, `,"pod_uuid":`, c.PodUUID)
		dst = appendOptString(dst, `,"orchestrator":`, c.Orchestrator)
		if len(c.Labels) > 0 {
			dst = appendKey(dst, `,"labels":`)
			dst = appendStrings(dst, c.Labels)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendAgentfence(dst []byte, u *AgentfenceData) []byte {
	dst = append(dst, `{"schema":`...)
	dst = appendString(dst, u.Schema)
	dst = append(dst, `,"kind":`...)
	dst = appendString(dst, u.Kind)
	dst = appendOptUint(dst, `,"seq":`, u.Seq)
	dst = appendOptString(dst, `,"prev_hash":`, u.PrevHash)
	dst = appendOptString(dst, `,"verdict":`, u.Verdict)
	dst = appendOptString(dst, `,"reason":`, u.Reason)
	dst = appendOptString(dst, `,"errno":`, u.Errno)
	dst = appendOptString(dst, `,"held_by":`, u.HeldBy)
	dst = appendOptString(dst, `,"event":`, u.Event)
	dst = appendOptString(dst, `,"intent":`, u.Intent)
	dst = appendOptString(dst, `,"session_mode":`, u.SessionMode)
	dst = appendOptString(dst, `,"parent_session":`, u.ParentSession)
	dst = appendOptString(dst, `,"origin_kind":`, u.OriginKind)
	dst = appendOptString(dst, `,"origin_principal":`, u.OriginPrincipal)
	dst = appendOptString(dst, `,"agent_version":`, u.AgentVersion)
	dst = appendOptString(dst, `,"agent_owner":`, u.AgentOwner)
	if u.GID != nil {
		dst = append(dst, `,"gid":`...)
		dst = strconv.AppendUint(dst, uint64(*u.GID), 10)
	}
	dst = appendOptUint(dst, `,"ppid":`, uint64(u.PPID))
	dst = appendOptUint(dst, `,"cgroup_id":`, u.CgroupID)
	dst = appendOptString(dst, `,"cgroup":`, u.Cgroup)
	if p := u.Pod; p != nil {
		dst = append(dst, `,"pod":{`...)
		dst = appendOptString(dst, `,"namespace":`, p.Namespace)
		dst = appendOptString(dst, `,"name":`, p.Name)
		dst = appendOptString(dst, `,"service_account":`, p.ServiceAccount)
		dst = appendOptString(dst, `,"node":`, p.Node)
		dst = append(dst, '}')
	}
	if u.Gap != nil {
		dst = append(dst, `,"gap":`...)
		dst = appendGap(dst, u.Gap)
	}
	if d := u.Destination; d != nil {
		dst = append(dst, `,"destination":{`...)
		dst = appendOptString(dst, `,"protocol":`, d.Protocol)
		dst = append(dst, '}')
	}
	if e := u.Escape; e != nil {
		dst = append(dst, `,"escape":`...)
		dst = appendEscape(dst, e)
	}
	if s := u.Socket; s != nil {
		dst = append(dst, `,"socket":{"family":`...)
		dst = appendString(dst, s.Family)
		dst = append(dst, `,"type":`...)
		dst = appendString(dst, s.Type)
		dst = append(dst, `,"protocol":`...)
		dst = strconv.AppendInt(dst, int64(s.Protocol), 10)
		dst = appendOptString(dst, `,"refused_by":`, s.RefusedBy)
		dst = append(dst, '}')
	}
	if m := u.MCP; m != nil {
		dst = append(dst, `,"mcp":`...)
		dst = appendMCP(dst, m)
	}
	if t := u.TLS; t != nil {
		dst = append(dst, `,"tls":{"library":`...)
		dst = appendString(dst, t.Library)
		dst = append(dst, `,"socket":`...)
		dst = strconv.AppendBool(dst, t.Socket)
		if t.Uncovered != "" {
			dst = append(dst, `,"uncovered":`...)
			dst = appendString(dst, t.Uncovered)
		}
		dst = append(dst, '}')
	}
	if c := u.Credential; c != nil {
		dst = append(dst, `,"credential":`...)
		dst = appendCredential(dst, c)
	}
	if u.HTTPPartial {
		dst = append(dst, `,"http_partial":true`...)
	}
	dst = appendOptString(dst, `,"query_hash":`, u.QueryHash)
	return append(dst, '}')
}

// appendEscape encodes audit.Escape by its own json tags.
func appendEscape(dst []byte, e *audit.Escape) []byte {
	dst = append(dst, `{"what":`...)
	dst = appendString(dst, e.What)
	dst = appendOptString(dst, `,"cgroup":`, e.Cgroup)
	dst = appendOptUint(dst, `,"cgroup_id":`, e.CgroupID)
	dst = appendOptUint(dst, `,"by_pid":`, uint64(e.ByPID))
	dst = appendOptUint(dst, `,"child_pid":`, uint64(e.ChildPID))
	dst = appendOptUint(dst, `,"netns":`, e.NetNS)
	dst = appendOptString(dst, `,"via":`, e.Via)
	dst = appendOptUint(dst, `,"target_pid":`, uint64(e.TargetPID))
	return append(dst, '}')
}

// appendMCP encodes audit.MCP by its own json tags.
func appendMCP(dst []byte, m *audit.MCP) []byte {
	dst = append(dst, `{"server":`...)
	dst = appendString(dst, m.Server)
	dst = appendOptString(dst, `,"session":`, m.Session)
	dst = appendOptString(dst, `,"serves":`, m.Serves)
	dst = appendOptString(dst, `,"exe":`, m.Exe)
	dst = appendOptString(dst, `,"script":`, m.Script)
	dst = appendOptString(dst, `,"script_sha256":`, m.ScriptSHA256)
	return append(dst, '}')
}

// appendCredential encodes audit.Credential by its own json tags.
func appendCredential(dst []byte, c *audit.Credential) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendString(dst, c.Type)
	dst = appendOptString(dst, `,"header":`, c.Header)
	dst = appendOptString(dst, `,"fingerprint":`, c.Fingerprint)
	dst = appendOptString(dst, `,"key_id":`, c.KeyID)
	dst = appendOptString(dst, `,"holder":`, c.Holder)
	return append(dst, '}')
}

// appendGap encodes audit.Gap by its own json tags.
func appendGap(dst []byte, g *audit.Gap) []byte {
	dst = append(dst, `{"source":`...)
	dst = appendString(dst, g.Source)
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendUint(dst, g.Count, 10)
	dst = appendOptUint(dst, `,"first_seq":`, g.FirstSeq)
	dst = appendOptUint(dst, `,"last_seq":`, g.LastSeq)
	return append(dst, '}')
}

// appendKey appends key, a member name written with a leading comma,
// dropping the comma when the member is the first of its object. Only
// objects whose members are all optional need it: a member value always
// ends in '"', '}', ']' or a digit, never in '{'.
func appendKey(dst []byte, key string) []byte {
	if dst[len(dst)-1] == '{' {
		key = key[1:]
	}
	return append(dst, key...)
}

func appendOptString(dst []byte, key, s string) []byte {
	if s == "" {
		return dst
	}
	dst = appendKey(dst, key)
	return appendString(dst, s)
}

func appendOptInt(dst []byte, key string, v int64) []byte {
	if v == 0 {
		return dst
	}
	dst = appendKey(dst, key)
	return strconv.AppendInt(dst, v, 10)
}

func appendOptUint(dst []byte, key string, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = appendKey(dst, key)
	return strconv.AppendUint(dst, v, 10)
}

func appendStrings(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, s)
	}
	return append(dst, ']')
}

const (
	hexDigits = "0123456789abcdef"
	lsb       = 0x0101010101010101 // one in the low bit of every byte
)

// jsonSafe reports the ASCII bytes encoding/json writes unescaped when
// HTML escaping is off: everything from space to DEL except '"' and '\\'.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := ' '; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// appendString appends s as a JSON string the way encoding/json does with
// HTML escaping off: '"' and '\\' backslash-escaped, \b \f \n \r \t short
// escapes, other control bytes as \u00XX (lower-case hex), each byte of
// invalid UTF-8 as \ufffd, and U+2028 / U+2029 as \u2028 / \u2029.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain bytes at a time: printable ASCII other than
		// '"' and '\\'. A non-zero mask may be a false positive only
		// above a byte that really needs work, which the loop below then
		// handles one byte at a time.
		for i+8 <= len(s) {
			w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
				uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
			q, bs := w^(lsb*'"'), w^(lsb*'\\')
			if (w|(w-lsb*' ')|(q-lsb)&^q|(bs-lsb)&^bs)&(lsb*0x80) != 0 {
				break
			}
			i += 8
		}
		if i >= len(s) {
			break
		}
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendEndpoint(dst []byte, key string, p *Endpoint) []byte {
	if p == nil {
		return dst
	}
	dst = append(dst, key...)
	dst = appendOptString(dst, `,"ip":`, p.IP)
	dst = appendOptUint(dst, `,"port":`, uint64(p.Port))
	dst = appendOptString(dst, `,"hostname":`, p.Hostname)
	dst = appendOptString(dst, `,"name":`, p.Name)
	return append(dst, '}')
}
