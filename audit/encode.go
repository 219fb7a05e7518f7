package audit

import (
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/agentfence/agentfence/internal/jsonw"
)

// This file writes a Record's canonical bytes by hand. They must be
// exactly what encoding/json writes for the Record with HTML escaping off
// (the canonical form's definition, which the chain's hashes and every
// receiver's verifier rely on): members in declaration order, omitempty
// as encoding/json applies it, strings escaped as it escapes them.
// encode_test.go compares the two on every member and under fuzzing
// (FuzzCanonicalMatchesEncodingJSON); a member added to a type of
// record.go needs its line here, which TestCanonicalCoversEveryMember
// catches when it is forgotten. Reflection made encoding/json the largest
// single item of the daemon's CPU per record (docs/benchmarks.md, issue 17).

// AppendCanonical appends the canonical bytes of r to dst.
func AppendCanonical(dst []byte, r *Record) ([]byte, error) {
	dst = append(dst, `{"schema":`...)
	dst = jsonw.String(dst, r.Schema)
	dst = jsonw.OptUint(dst, `,"seq":`, r.Seq)
	dst = jsonw.OptString(dst, `,"prev_hash":`, r.PrevHash)
	dst = append(dst, `,"time":`...)
	dst, err := appendTime(dst, r.Time)
	if err != nil {
		return dst, err
	}
	dst = jsonw.OptUint(dst, `,"count":`, r.Count)
	if r.FirstTime != nil {
		dst = append(dst, `,"first_time":`...)
		if dst, err = appendTime(dst, *r.FirstTime); err != nil {
			return dst, err
		}
	}
	if r.LastTime != nil {
		dst = append(dst, `,"last_time":`...)
		if dst, err = appendTime(dst, *r.LastTime); err != nil {
			return dst, err
		}
	}
	dst = append(dst, `,"kind":`...)
	dst = jsonw.String(dst, r.Kind)
	dst = jsonw.OptString(dst, `,"host":`, r.Host)
	if s := r.Session; s != nil {
		dst = append(dst, `,"session":`...)
		dst = s.appendJSON(dst)
	}
	if a := r.Agent; a != nil {
		dst = append(dst, `,"agent":{`...)
		dst = jsonw.OptString(dst, `,"id":`, a.ID)
		dst = jsonw.OptString(dst, `,"name":`, a.Name)
		dst = jsonw.OptString(dst, `,"version":`, a.Version)
		dst = jsonw.OptString(dst, `,"owner":`, a.Owner)
		dst = append(dst, '}')
	}
	if o := r.Origin; o != nil {
		dst = append(dst, `,"origin":{"kind":`...)
		dst = jsonw.String(dst, o.Kind)
		dst = jsonw.OptString(dst, `,"principal":`, o.Principal)
		dst = append(dst, '}')
	}
	if p := r.Process; p != nil {
		dst = append(dst, `,"process":`...)
		dst = p.appendJSON(dst)
	}
	dst = appendDestination(dst, `,"destination":`, r.Destination)
	dst = appendDestination(dst, `,"source":`, r.Source)
	if o := r.Outcome; o != nil {
		dst = append(dst, `,"outcome":{"verdict":`...)
		dst = jsonw.String(dst, o.Verdict)
		dst = jsonw.OptString(dst, `,"rule":`, o.Rule)
		dst = jsonw.OptString(dst, `,"reason":`, o.Reason)
		dst = jsonw.OptString(dst, `,"errno":`, o.Errno)
		dst = jsonw.OptUint(dst, `,"suppressed":`, uint64(o.Suppressed))
		dst = jsonw.OptString(dst, `,"held_by":`, o.HeldBy)
		dst = append(dst, '}')
	}
	if g := r.Gap; g != nil {
		dst = append(dst, `,"gap":`...)
		dst = g.AppendJSON(dst)
	}
	if e := r.Escape; e != nil {
		dst = append(dst, `,"escape":`...)
		dst = e.AppendJSON(dst)
	}
	if s := r.Socket; s != nil {
		dst = append(dst, `,"socket":`...)
		dst = s.AppendJSON(dst)
	}
	if q := r.Query; q != nil {
		dst = append(dst, `,"query":{"name":`...)
		dst = jsonw.String(dst, q.Name)
		if q.Truncated {
			dst = append(dst, `,"truncated":true`...)
		}
		dst = jsonw.OptString(dst, `,"type":`, q.Type)
		dst = append(dst, '}')
	}
	if m := r.MCP; m != nil {
		dst = append(dst, `,"mcp":`...)
		dst = m.AppendJSON(dst)
	}
	if h := r.HTTP; h != nil {
		dst = append(dst, `,"http":`...)
		dst = h.appendJSON(dst)
	}
	if t := r.TLS; t != nil {
		dst = append(dst, `,"tls":`...)
		dst = t.AppendJSON(dst)
	}
	if c := r.Credential; c != nil {
		dst = append(dst, `,"credential":`...)
		dst = c.AppendJSON(dst)
	}
	if p := r.Pod; p != nil {
		dst = append(dst, `,"pod":`...)
		dst = p.appendJSON(dst)
	}
	dst = jsonw.OptString(dst, `,"event":`, r.Event)
	dst = jsonw.OptString(dst, `,"actor":`, r.Actor)
	return append(dst, '}'), nil
}

// appendTime writes t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds. Records' times are UTC from the daemon's clock, which the
// fast path writes; any other time goes through MarshalJSON itself, which
// also refuses what encoding/json refuses (a year outside 0–9999).
func appendTime(dst []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); t.Location() == time.UTC && y >= 0 && y <= 9999 {
		dst = append(dst, '"')
		dst = t.AppendFormat(dst, time.RFC3339Nano)
		return append(dst, '"'), nil
	}
	b, err := t.MarshalJSON()
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

func (s *Session) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = jsonw.String(dst, s.ID)
	dst = append(dst, `,"intent":`...)
	dst = jsonw.String(dst, s.Intent)
	dst = jsonw.OptString(dst, `,"mode":`, s.Mode)
	dst = jsonw.OptString(dst, `,"parent":`, s.Parent)
	if len(s.KeptCaps) > 0 {
		dst = append(dst, `,"kept_caps":`...)
		dst = jsonw.Strings(dst, s.KeptCaps)
	}
	dst = jsonw.OptString(dst, `,"dns":`, s.DNS)
	dst = jsonw.OptString(dst, `,"credentials":`, s.Credentials)
	if len(s.GateCaps) > 0 {
		dst = append(dst, `,"gate_caps":[`...)
		for i, h := range s.GateCaps {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"pid":`...)
			dst = strconv.AppendUint(dst, uint64(h.PID), 10)
			dst = append(dst, `,"caps":`...)
			dst = appendStringsOrNull(dst, h.Caps)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

func (p *Process) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"pid":`...)
	dst = strconv.AppendUint(dst, uint64(p.PID), 10)
	dst = jsonw.OptUint(dst, `,"tid":`, uint64(p.TID))
	dst = jsonw.OptUint(dst, `,"ppid":`, uint64(p.PPID))
	dst = append(dst, `,"uid":`...)
	dst = strconv.AppendUint(dst, uint64(p.UID), 10)
	dst = append(dst, `,"gid":`...)
	dst = strconv.AppendUint(dst, uint64(p.GID), 10)
	dst = append(dst, `,"comm":`...)
	dst = jsonw.String(dst, p.Comm)
	dst = jsonw.OptString(dst, `,"exe":`, p.Exe)
	dst = jsonw.OptString(dst, `,"sha256":`, p.SHA256)
	if len(p.Argv) > 0 {
		dst = append(dst, `,"argv":`...)
		dst = jsonw.Strings(dst, p.Argv)
	}
	dst = jsonw.OptUint(dst, `,"cgroup_id":`, p.CgroupID)
	dst = jsonw.OptString(dst, `,"cgroup":`, p.Cgroup)
	dst = jsonw.OptString(dst, `,"container_id":`, p.ContainerID)
	dst = jsonw.OptString(dst, `,"pod_uid":`, p.PodUID)
	if len(p.Ancestry) > 0 {
		dst = append(dst, `,"ancestry":`...)
		dst = jsonw.Strings(dst, p.Ancestry)
	}
	if p.ExitCode != nil {
		dst = append(dst, `,"exit_code":`...)
		dst = strconv.AppendInt(dst, int64(*p.ExitCode), 10)
	}
	return append(dst, '}')
}

func appendDestination(dst []byte, key string, d *Destination) []byte {
	if d == nil {
		return dst
	}
	dst = append(dst, key...)
	dst = append(dst, `{"ip":`...)
	dst = jsonw.String(dst, d.IP)
	dst = append(dst, `,"port":`...)
	dst = strconv.AppendUint(dst, uint64(d.Port), 10)
	dst = append(dst, `,"protocol":`...)
	dst = jsonw.String(dst, d.Protocol)
	dst = jsonw.OptString(dst, `,"hostname":`, d.Hostname)
	return append(dst, '}')
}

func (h *HTTP) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	dst = jsonw.OptString(dst, `,"method":`, h.Method)
	dst = jsonw.OptString(dst, `,"host":`, h.Host)
	dst = jsonw.OptString(dst, `,"path":`, h.Path)
	dst = jsonw.OptString(dst, `,"query_hash":`, h.Query)
	dst = jsonw.OptInt(dst, `,"status":`, int64(h.Status))
	dst = jsonw.OptString(dst, `,"version":`, h.Version)
	dst = jsonw.Key(dst, `,"request_bytes":`)
	dst = strconv.AppendInt(dst, h.RequestBytes, 10)
	dst = append(dst, `,"response_bytes":`...)
	dst = strconv.AppendInt(dst, h.ResponseBytes, 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = strconv.AppendInt(dst, h.DurationMS, 10)
	if h.Partial {
		dst = append(dst, `,"partial":true`...)
	}
	return append(dst, '}')
}

func (p *Pod) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"uid":`...)
	dst = jsonw.String(dst, p.UID)
	dst = jsonw.OptString(dst, `,"namespace":`, p.Namespace)
	dst = jsonw.OptString(dst, `,"name":`, p.Name)
	dst = jsonw.OptString(dst, `,"service_account":`, p.ServiceAccount)
	dst = jsonw.OptString(dst, `,"node":`, p.Node)
	if len(p.Labels) > 0 {
		// encoding/json writes a map's members in key order.
		dst = append(dst, `,"labels":{`...)
		for i, k := range slices.Sorted(maps.Keys(p.Labels)) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonw.String(dst, k)
			dst = append(dst, ':')
			dst = jsonw.String(dst, p.Labels[k])
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// appendStringsOrNull writes a slice without omitempty: nil is null.
func appendStringsOrNull(dst []byte, ss []string) []byte {
	if ss == nil {
		return append(dst, "null"...)
	}
	return jsonw.Strings(dst, ss)
}

// The types below are written the same way inside OCSF's unmapped
// agentfence object, hence exported.

// AppendJSON appends g's JSON encoding to dst.
func (g *Gap) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"source":`...)
	dst = jsonw.String(dst, g.Source)
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendUint(dst, g.Count, 10)
	dst = jsonw.OptUint(dst, `,"first_seq":`, g.FirstSeq)
	dst = jsonw.OptUint(dst, `,"last_seq":`, g.LastSeq)
	return append(dst, '}')
}

// AppendJSON appends e's JSON encoding to dst.
func (e *Escape) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"what":`...)
	dst = jsonw.String(dst, e.What)
	dst = jsonw.OptString(dst, `,"cgroup":`, e.Cgroup)
	dst = jsonw.OptUint(dst, `,"cgroup_id":`, e.CgroupID)
	dst = jsonw.OptUint(dst, `,"by_pid":`, uint64(e.ByPID))
	dst = jsonw.OptUint(dst, `,"child_pid":`, uint64(e.ChildPID))
	dst = jsonw.OptUint(dst, `,"netns":`, e.NetNS)
	dst = jsonw.OptString(dst, `,"via":`, e.Via)
	dst = jsonw.OptUint(dst, `,"target_pid":`, uint64(e.TargetPID))
	return append(dst, '}')
}

// AppendJSON appends s's JSON encoding to dst.
func (s *Socket) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"family":`...)
	dst = jsonw.String(dst, s.Family)
	dst = append(dst, `,"type":`...)
	dst = jsonw.String(dst, s.Type)
	dst = append(dst, `,"protocol":`...)
	dst = strconv.AppendInt(dst, int64(s.Protocol), 10)
	dst = jsonw.OptString(dst, `,"refused_by":`, s.RefusedBy)
	return append(dst, '}')
}

// AppendJSON appends m's JSON encoding to dst.
func (m *MCP) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"server":`...)
	dst = jsonw.String(dst, m.Server)
	dst = jsonw.OptString(dst, `,"session":`, m.Session)
	dst = jsonw.OptString(dst, `,"serves":`, m.Serves)
	dst = jsonw.OptString(dst, `,"exe":`, m.Exe)
	dst = jsonw.OptString(dst, `,"script":`, m.Script)
	dst = jsonw.OptString(dst, `,"script_sha256":`, m.ScriptSHA256)
	return append(dst, '}')
}

// AppendJSON appends t's JSON encoding to dst.
func (t *TLS) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"library":`...)
	dst = jsonw.String(dst, t.Library)
	dst = append(dst, `,"socket":`...)
	dst = strconv.AppendBool(dst, t.Socket)
	dst = jsonw.OptString(dst, `,"uncovered":`, t.Uncovered)
	return append(dst, '}')
}

// AppendJSON appends c's JSON encoding to dst.
func (c *Credential) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":`...)
	dst = jsonw.String(dst, c.Type)
	dst = jsonw.OptString(dst, `,"header":`, c.Header)
	dst = jsonw.OptString(dst, `,"fingerprint":`, c.Fingerprint)
	dst = jsonw.OptString(dst, `,"key_id":`, c.KeyID)
	dst = jsonw.OptString(dst, `,"holder":`, c.Holder)
	return append(dst, '}')
}
