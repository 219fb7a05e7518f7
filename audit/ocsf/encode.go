package ocsf

import (
	"strconv"

	"github.com/agentfence/agentfence/internal/jsonw"
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
	dst = jsonw.OptString(dst, `,"activity_name":`, ev.ActivityName)
	dst = append(dst, `,"category_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.CategoryUID), 10)
	dst = jsonw.OptString(dst, `,"category_name":`, ev.CategoryName)
	dst = append(dst, `,"class_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.ClassUID), 10)
	dst = jsonw.OptString(dst, `,"class_name":`, ev.ClassName)
	dst = append(dst, `,"type_uid":`...)
	dst = strconv.AppendInt(dst, int64(ev.TypeUID), 10)
	dst = jsonw.OptString(dst, `,"type_name":`, ev.TypeName)
	dst = append(dst, `,"time":`...)
	dst = strconv.AppendInt(dst, ev.Time, 10)
	dst = jsonw.OptInt(dst, `,"start_time":`, ev.StartTime)
	dst = jsonw.OptInt(dst, `,"end_time":`, ev.EndTime)
	dst = jsonw.OptInt(dst, `,"duration":`, ev.Duration)
	if ev.Count != 0 {
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendUint(dst, ev.Count, 10)
	}
	dst = append(dst, `,"severity_id":`...)
	dst = strconv.AppendInt(dst, int64(ev.SeverityID), 10)
	dst = jsonw.OptString(dst, `,"severity":`, ev.Severity)
	dst = jsonw.OptString(dst, `,"message":`, ev.Message)
	dst = jsonw.OptInt(dst, `,"status_id":`, int64(ev.StatusID))
	dst = jsonw.OptString(dst, `,"status":`, ev.Status)
	dst = jsonw.OptString(dst, `,"status_code":`, ev.StatusCode)
	dst = jsonw.OptString(dst, `,"status_detail":`, ev.StatusDetail)
	if ev.ActionID != nil {
		dst = append(dst, `,"action_id":`...)
		dst = strconv.AppendInt(dst, int64(*ev.ActionID), 10)
	}
	dst = jsonw.OptString(dst, `,"action":`, ev.Action)
	if ev.DispositionID != nil {
		dst = append(dst, `,"disposition_id":`...)
		dst = strconv.AppendInt(dst, int64(*ev.DispositionID), 10)
	}
	dst = jsonw.OptString(dst, `,"disposition":`, ev.Disposition)
	dst = append(dst, `,"metadata":`...)
	dst = appendMetadata(dst, &ev.Metadata)
	if ev.Actor != nil {
		dst = append(dst, `,"actor":`...)
		dst = appendActor(dst, ev.Actor)
	}
	if d := ev.Device; d != nil {
		dst = append(dst, `,"device":{"type_id":`...)
		dst = strconv.AppendInt(dst, int64(d.TypeID), 10)
		dst = jsonw.OptString(dst, `,"type":`, d.Type)
		dst = jsonw.OptString(dst, `,"hostname":`, d.Hostname)
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
		dst = jsonw.OptString(dst, `,"direction":`, c.Direction)
		dst = jsonw.OptString(dst, `,"protocol_name":`, c.ProtocolName)
		dst = jsonw.OptInt(dst, `,"protocol_num":`, int64(c.ProtocolNum))
		dst = append(dst, '}')
	}
	if q := ev.HTTPRequest; q != nil {
		dst = append(dst, `,"http_request":{`...)
		dst = jsonw.OptString(dst, `,"http_method":`, q.HTTPMethod)
		if u := q.URL; u != nil {
			dst = jsonw.Key(dst, `,"url":{`)
			dst = jsonw.OptString(dst, `,"hostname":`, u.Hostname)
			dst = jsonw.OptString(dst, `,"path":`, u.Path)
			dst = jsonw.OptUint(dst, `,"port":`, uint64(u.Port))
			dst = jsonw.OptString(dst, `,"scheme":`, u.Scheme)
			dst = jsonw.OptString(dst, `,"url_string":`, u.URLString)
			dst = append(dst, '}')
		}
		dst = jsonw.OptString(dst, `,"version":`, q.Version)
		dst = append(dst, '}')
	}
	if p := ev.HTTPResponse; p != nil {
		dst = append(dst, `,"http_response":{`...)
		dst = jsonw.OptInt(dst, `,"code":`, int64(p.Code))
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
		dst = jsonw.String(dst, q.Hostname)
		dst = jsonw.OptString(dst, `,"type":`, q.Type)
		dst = append(dst, '}')
	}
	if m := ev.Entity; m != nil {
		dst = append(dst, `,"entity":{"uid":`...)
		dst = jsonw.String(dst, m.UID)
		dst = jsonw.OptString(dst, `,"name":`, m.Name)
		dst = jsonw.OptString(dst, `,"type":`, m.Type)
		if d := m.Data; d != nil {
			dst = append(dst, `,"data":{`...)
			dst = jsonw.OptString(dst, `,"mode":`, d.Mode)
			dst = jsonw.OptString(dst, `,"parent":`, d.Parent)
			if len(d.KeptCaps) > 0 {
				dst = jsonw.Key(dst, `,"kept_caps":`)
				dst = jsonw.Strings(dst, d.KeptCaps)
			}
			dst = jsonw.OptString(dst, `,"dns":`, d.DNS)
			if len(d.GateCaps) > 0 {
				dst = jsonw.Key(dst, `,"gate_caps":`)
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
						dst = jsonw.Strings(dst, h.Caps)
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
		dst = jsonw.OptString(dst, `,"name":`, f.Name)
		dst = jsonw.OptString(dst, `,"desc":`, f.Desc)
		dst = append(dst, '}')
	}
	dst = jsonw.OptString(dst, `,"log_provider":`, ev.LogProvider)
	dst = jsonw.OptString(dst, `,"log_name":`, ev.LogName)
	if ev.Unmapped != nil {
		dst = append(dst, `,"unmapped":{"agentfence":`...)
		dst = appendAgentfence(dst, &ev.Unmapped.Agentfence)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendMetadata(dst []byte, m *Metadata) []byte {
	dst = append(dst, `{"version":`...)
	dst = jsonw.String(dst, m.Version)
	dst = append(dst, `,"product":{"name":`...)
	dst = jsonw.String(dst, m.Product.Name)
	dst = append(dst, `,"vendor_name":`...)
	dst = jsonw.String(dst, m.Product.VendorName)
	dst = jsonw.OptString(dst, `,"version":`, m.Product.Version)
	dst = append(dst, '}')
	if len(m.Profiles) > 0 {
		dst = append(dst, `,"profiles":`...)
		dst = jsonw.Strings(dst, m.Profiles)
	}
	dst = jsonw.OptString(dst, `,"uid":`, m.UID)
	dst = jsonw.OptUint(dst, `,"sequence":`, m.Sequence)
	dst = jsonw.OptString(dst, `,"correlation_uid":`, m.CorrelationUID)
	dst = jsonw.OptString(dst, `,"log_name":`, m.LogName)
	return append(dst, '}')
}

func appendActor(dst []byte, a *Actor) []byte {
	dst = append(dst, '{')
	dst = jsonw.OptString(dst, `,"app_name":`, a.AppName)
	dst = jsonw.OptString(dst, `,"app_uid":`, a.AppUID)
	if a.Process != nil {
		dst = jsonw.Key(dst, `,"process":`)
		dst = appendProcess(dst, a.Process)
	}
	if s := a.Session; s != nil {
		dst = jsonw.Key(dst, `,"session":{"uid":`)
		dst = jsonw.String(dst, s.UID)
		dst = jsonw.OptString(dst, `,"issuer":`, s.Issuer)
		dst = append(dst, '}')
	}
	if a.User != nil {
		dst = jsonw.Key(dst, `,"user":`)
		dst = appendUser(dst, a.User)
	}
	return append(dst, '}')
}

func appendUser(dst []byte, u *User) []byte {
	dst = append(dst, '{')
	dst = jsonw.OptString(dst, `,"uid":`, u.UID)
	dst = jsonw.OptString(dst, `,"name":`, u.Name)
	return append(dst, '}')
}

func appendProcess(dst []byte, p *Process) []byte {
	dst = append(dst, '{')
	dst = jsonw.OptUint(dst, `,"pid":`, uint64(p.PID))
	dst = jsonw.OptUint(dst, `,"tid":`, uint64(p.TID))
	dst = jsonw.OptString(dst, `,"name":`, p.Name)
	dst = jsonw.OptString(dst, `,"cmd_line":`, p.CmdLine)
	if f := p.File; f != nil {
		dst = jsonw.Key(dst, `,"file":{"name":`)
		dst = jsonw.String(dst, f.Name)
		dst = append(dst, `,"type_id":`...)
		dst = strconv.AppendInt(dst, int64(f.TypeID), 10)
		dst = jsonw.OptString(dst, `,"type":`, f.Type)
		dst = jsonw.OptString(dst, `,"path":`, f.Path)
		if len(f.Hashes) > 0 {
			dst = append(dst, `,"hashes":[`...)
			for i := range f.Hashes {
				h := &f.Hashes[i]
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, `{"algorithm_id":`...)
				dst = strconv.AppendInt(dst, int64(h.AlgorithmID), 10)
				dst = jsonw.OptString(dst, `,"algorithm":`, h.Algorithm)
				dst = append(dst, `,"value":`...)
				dst = jsonw.String(dst, h.Value)
				dst = append(dst, '}')
			}
			dst = append(dst, ']')
		}
		dst = append(dst, '}')
	}
	if p.User != nil {
		dst = jsonw.Key(dst, `,"user":`)
		dst = appendUser(dst, p.User)
	}
	if p.ParentProcess != nil {
		dst = jsonw.Key(dst, `,"parent_process":`)
		dst = appendProcess(dst, p.ParentProcess)
	}
	if len(p.Lineage) > 0 {
		dst = jsonw.Key(dst, `,"lineage":`)
		dst = jsonw.Strings(dst, p.Lineage)
	}
	if c := p.Container; c != nil {
		dst = jsonw.Key(dst, `,"container":{`)
		dst = jsonw.OptString(dst, `,"uid":`, c.UID)
		dst = jsonw.OptString(dst, `,"pod_uuid":`, c.PodUUID)
		dst = jsonw.OptString(dst, `,"orchestrator":`, c.Orchestrator)
		if len(c.Labels) > 0 {
			dst = jsonw.Key(dst, `,"labels":`)
			dst = jsonw.Strings(dst, c.Labels)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendAgentfence(dst []byte, u *AgentfenceData) []byte {
	dst = append(dst, `{"schema":`...)
	dst = jsonw.String(dst, u.Schema)
	dst = append(dst, `,"kind":`...)
	dst = jsonw.String(dst, u.Kind)
	dst = jsonw.OptUint(dst, `,"seq":`, u.Seq)
	dst = jsonw.OptString(dst, `,"prev_hash":`, u.PrevHash)
	dst = jsonw.OptString(dst, `,"verdict":`, u.Verdict)
	dst = jsonw.OptString(dst, `,"reason":`, u.Reason)
	dst = jsonw.OptString(dst, `,"errno":`, u.Errno)
	dst = jsonw.OptString(dst, `,"held_by":`, u.HeldBy)
	dst = jsonw.OptString(dst, `,"event":`, u.Event)
	dst = jsonw.OptString(dst, `,"intent":`, u.Intent)
	dst = jsonw.OptString(dst, `,"session_mode":`, u.SessionMode)
	dst = jsonw.OptString(dst, `,"parent_session":`, u.ParentSession)
	dst = jsonw.OptString(dst, `,"origin_kind":`, u.OriginKind)
	dst = jsonw.OptString(dst, `,"origin_principal":`, u.OriginPrincipal)
	dst = jsonw.OptString(dst, `,"agent_version":`, u.AgentVersion)
	dst = jsonw.OptString(dst, `,"agent_owner":`, u.AgentOwner)
	if u.GID != nil {
		dst = append(dst, `,"gid":`...)
		dst = strconv.AppendUint(dst, uint64(*u.GID), 10)
	}
	dst = jsonw.OptUint(dst, `,"ppid":`, uint64(u.PPID))
	dst = jsonw.OptUint(dst, `,"cgroup_id":`, u.CgroupID)
	dst = jsonw.OptString(dst, `,"cgroup":`, u.Cgroup)
	if p := u.Pod; p != nil {
		dst = append(dst, `,"pod":{`...)
		dst = jsonw.OptString(dst, `,"namespace":`, p.Namespace)
		dst = jsonw.OptString(dst, `,"name":`, p.Name)
		dst = jsonw.OptString(dst, `,"service_account":`, p.ServiceAccount)
		dst = jsonw.OptString(dst, `,"node":`, p.Node)
		dst = append(dst, '}')
	}
	if u.Gap != nil {
		dst = append(dst, `,"gap":`...)
		dst = u.Gap.AppendJSON(dst)
	}
	if d := u.Destination; d != nil {
		dst = append(dst, `,"destination":{`...)
		dst = jsonw.OptString(dst, `,"protocol":`, d.Protocol)
		dst = append(dst, '}')
	}
	if e := u.Escape; e != nil {
		dst = append(dst, `,"escape":`...)
		dst = e.AppendJSON(dst)
	}
	if s := u.Socket; s != nil {
		dst = append(dst, `,"socket":`...)
		dst = s.AppendJSON(dst)
	}
	if m := u.MCP; m != nil {
		dst = append(dst, `,"mcp":`...)
		dst = m.AppendJSON(dst)
	}
	if t := u.TLS; t != nil {
		dst = append(dst, `,"tls":`...)
		dst = t.AppendJSON(dst)
	}
	if c := u.Credential; c != nil {
		dst = append(dst, `,"credential":`...)
		dst = c.AppendJSON(dst)
	}
	if u.HTTPPartial {
		dst = append(dst, `,"http_partial":true`...)
	}
	dst = jsonw.OptString(dst, `,"query_hash":`, u.QueryHash)
	return append(dst, '}')
}

func appendEndpoint(dst []byte, key string, p *Endpoint) []byte {
	if p == nil {
		return dst
	}
	dst = append(dst, key...)
	dst = jsonw.OptString(dst, `,"ip":`, p.IP)
	dst = jsonw.OptUint(dst, `,"port":`, uint64(p.Port))
	dst = jsonw.OptString(dst, `,"hostname":`, p.Hostname)
	dst = jsonw.OptString(dst, `,"name":`, p.Name)
	return append(dst, '}')
}
