package enforcer

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/scope"
)

// Mode is how a session's scope is applied (enum af_mode, bpf/gate.h).
type Mode uint32

const (
	ModeEnforce = Mode(gateAfModeAF_MODE_ENFORCE) // deny with EPERM
	ModeAudit   = Mode(gateAfModeAF_MODE_AUDIT)   // allow, record would_deny
)

// State is a session slot's state as the kernel sees it (enum af_state).
type State uint32

const (
	StateFree        = State(gateAfStateAF_STATE_FREE)
	StateActive      = State(gateAfStateAF_STATE_ACTIVE)
	StateQuarantined = State(gateAfStateAF_STATE_QUARANTINED)
	StateRevoked     = State(gateAfStateAF_STATE_REVOKED)
)

// SessionState is what the kernel keeps per session slot.
type SessionState struct {
	Gen        uint64
	ExpiresNS  uint64 // CLOCK_BOOTTIME; 0 = never
	State      State
	Mode       Mode
	Violations uint32
	Budget     uint32 // violations allowed before QuarantineOnBudget applies
	// QuarantineOnBudget makes the kernel switch the session to
	// StateQuarantined once Violations exceeds Budget.
	QuarantineOnBudget bool
	// KillOnDrift makes the kernel kill a member found holding a socket no
	// hook judges (socket families, boundary.go) before it can use it:
	// the kill drift action.
	KillOnDrift bool
	// LaunchesServers marks a session that declares MCP servers: its
	// members may not ptrace at all, nor receive inet sockets
	// (bpf/boundary.c), where a hook layer runs.
	LaunchesServers bool
	// DNS is what members may ask a resolver; "" is scope.DNSAny, the
	// kernel's reading of a slot written before dns modes.
	DNS scope.DNSMode
}

// dnsKernel is the kernel's value of a dns mode (enum af_dns_mode).
func dnsKernel(m scope.DNSMode) (gateAfDnsMode, error) {
	switch m {
	case "", scope.DNSAny:
		return gateAfDnsModeAF_DNS_ANY, nil
	case scope.DNSScoped:
		return gateAfDnsModeAF_DNS_SCOPED, nil
	case scope.DNSNone:
		return gateAfDnsModeAF_DNS_NONE, nil
	}
	return 0, fmt.Errorf("enforcer: unknown dns mode %q", m)
}

func dnsMode(v uint32) scope.DNSMode {
	switch gateAfDnsMode(v) {
	case gateAfDnsModeAF_DNS_SCOPED:
		return scope.DNSScoped
	case gateAfDnsModeAF_DNS_NONE:
		return scope.DNSNone
	}
	return scope.DNSAny
}

// PutSession writes a session slot. Writing an active state is what makes a
// session's bindings live, so callers write scopes first.
func (g *Gate) PutSession(slot uint32, s SessionState) error {
	v := gateSession{Gen: s.Gen, ExpiresNs: s.ExpiresNS, State: uint32(s.State), Mode: uint32(s.Mode), Violations: s.Violations, Budget: s.Budget}
	if s.QuarantineOnBudget {
		v.Flags |= uint32(gateAfSessionFlagAF_SESSION_QUARANTINE_ON_BUDGET)
	}
	if s.KillOnDrift {
		v.Flags |= uint32(gateAfSessionFlagAF_SESSION_KILL_ON_DRIFT)
	}
	if s.LaunchesServers {
		v.Flags |= uint32(gateAfSessionFlagAF_SESSION_LAUNCHES_SERVERS)
	}
	dns, err := dnsKernel(s.DNS)
	if err != nil {
		return err
	}
	v.Dns = uint32(dns)
	if dns != gateAfDnsModeAF_DNS_ANY && g.host == nil {
		// The DNS egress program is not loaded, so the gate refuses the
		// DNS port itself (bpf/gate.h).
		v.Flags |= uint32(gateAfSessionFlagAF_SESSION_DNS_AT_GATE)
	}
	if err := g.objs.Sessions.Update(slot, &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("enforcer: write session slot %d: %w", slot, err)
	}
	return nil
}

// Session reads a session slot.
func (g *Gate) Session(slot uint32) (SessionState, error) {
	var v gateSession
	if err := g.objs.Sessions.Lookup(slot, &v); err != nil {
		return SessionState{}, fmt.Errorf("enforcer: read session slot %d: %w", slot, err)
	}
	flags := gateAfSessionFlag(v.Flags)
	return SessionState{Gen: v.Gen, ExpiresNS: v.ExpiresNs, State: State(v.State), Mode: Mode(v.Mode),
		Violations: v.Violations, Budget: v.Budget, QuarantineOnBudget: flags&gateAfSessionFlagAF_SESSION_QUARANTINE_ON_BUDGET != 0,
		KillOnDrift: flags&gateAfSessionFlagAF_SESSION_KILL_ON_DRIFT != 0, LaunchesServers: flags&gateAfSessionFlagAF_SESSION_LAUNCHES_SERVERS != 0,
		DNS: dnsMode(v.Dns)}, nil
}

// SetState changes only the state of a slot, if it still holds generation gen,
// leaving the kernel's violation count alone.
func (g *Gate) SetState(slot uint32, gen uint64, st State) error {
	s, err := g.Session(slot)
	if err != nil {
		return err
	}
	if s.Gen != gen {
		return fmt.Errorf("enforcer: slot %d holds generation %d, not %d", slot, s.Gen, gen)
	}
	s.State = st
	return g.PutSession(slot, s)
}

// BindCgroup makes every task in the cgroup (and below it, unless a deeper
// cgroup is bound) a member of the session in slot/gen.
func (g *Gate) BindCgroup(cgroupID uint64, slot uint32, gen uint64) error {
	if err := g.objs.CgroupSessions.Update(cgroupID, gateBinding{Slot: slot, Gen: gen}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enforcer: bind cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// UnbindCgroup removes a cgroup binding; a missing one is not an error.
func (g *Gate) UnbindCgroup(cgroupID uint64) error {
	if err := g.objs.CgroupSessions.Delete(cgroupID); err != nil && !isNotExist(err) {
		return fmt.Errorf("enforcer: unbind cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// BindPid makes the process tgid (and, through the process programs, its
// future descendants) a member of the session in slot/gen. The binding
// names the network namespace it is in now, so that a later move to
// another is reported as it happens (bpf/process.h, AF_ESCAPE_NETNS).
func (g *Gate) BindPid(tgid uint32, slot uint32, gen uint64) error {
	b := gateBinding{Slot: slot, Gen: gen}
	var st unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", tgid), &st) == nil {
		// 0 when it cannot be read (the process is gone): not known.
		b.Netns = uint32(st.Ino)
	}
	if err := g.objs.PidSessions.Update(tgid, b, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enforcer: bind pid %d: %w", tgid, err)
	}
	return nil
}

// UnbindPid removes a pid binding; a missing one is not an error.
func (g *Gate) UnbindPid(tgid uint32) error {
	if err := g.objs.PidSessions.Delete(tgid); err != nil && !isNotExist(err) {
		return fmt.Errorf("enforcer: unbind pid %d: %w", tgid, err)
	}
	return nil
}

// WriteScope writes the compiled scope of the session in slot/gen. On error
// nothing of it is left in the maps.
func (g *Gate) WriteScope(slot uint32, gen uint64, entries []scope.Entry) error {
	vals := make([]gateScopeVal, len(entries))
	for i, e := range entries {
		v, err := scopeValue(gen, e)
		if err != nil {
			return err
		}
		vals[i] = v
	}
	for i, e := range entries {
		if err := g.putEntry(slot, e.Prefix, &vals[i]); err != nil {
			g.DeleteScope(slot, entries[:i])
			return err
		}
	}
	return nil
}

// DeleteScope removes the trie entries of a compiled scope. Entries already
// gone are not an error.
func (g *Gate) DeleteScope(slot uint32, entries []scope.Entry) error {
	var errs []error
	for _, e := range entries {
		m, key := g.scopeKey(slot, e.Prefix)
		if err := m.Delete(key); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("enforcer: delete scope entry %s: %w", e.Prefix, err))
		}
	}
	return errors.Join(errs...)
}

func (g *Gate) putEntry(slot uint32, p netip.Prefix, v *gateScopeVal) error {
	m, key := g.scopeKey(slot, p)
	if err := m.Update(key, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enforcer: write scope entry %s: %w", p, err)
	}
	return nil
}

// scopeKey says where an entry lives: host entries (/32, /128) in the hash
// the programs look in first, network entries in the trie (gate.h), the
// bind entry (no prefix, scope.Entry.IsBind) in binds.
func (g *Gate) scopeKey(slot uint32, p netip.Prefix) (*ebpf.Map, any) {
	host := p.Bits() == p.Addr().BitLen()
	switch {
	case !p.IsValid():
		return g.objs.Binds, &slot
	case p.Addr().Is4() && host:
		return g.objs.Exact4, &gateExact4Key{Slot: slot, Addr: p.Addr().As4()}
	case p.Addr().Is4():
		return g.objs.Scope4, &gateScope4Key{Prefixlen: 32 + uint32(p.Bits()), Slot: slot, Addr: p.Addr().As4()}
	case host:
		return g.objs.Exact6, &gateExact6Key{Slot: slot, Addr: p.Addr().As16()}
	}
	return g.objs.Scope6, &gateScope6Key{Prefixlen: 32 + uint32(p.Bits()), Slot: slot, Addr: p.Addr().As16()}
}

// kernelPortRule is r as the gate's maps hold it, its executable resolved
// to an identity.
func kernelPortRule(r scope.PortRule) (gatePortRule, error) {
	pr := gatePortRule{Lo: r.Lo, Hi: r.Hi, Rule: r.Index, Protos: r.Protos}
	if r.Essential {
		pr.Flags |= uint8(gateAfRuleFlagAF_RULE_ESSENTIAL)
	}
	if r.In {
		pr.Flags |= uint8(gateAfRuleFlagAF_RULE_IN)
	}
	if r.Exe != "" {
		id, err := exeIdentity(r.Exe)
		if err != nil {
			return pr, err
		}
		pr.Exe = id
		pr.Flags |= uint8(gateAfRuleFlagAF_RULE_EXE)
	}
	return pr, nil
}

func scopeValue(gen uint64, e scope.Entry) (gateScopeVal, error) {
	v := gateScopeVal{Gen: gen, N: uint32(len(e.Rules))}
	if len(e.Rules) > len(v.Rules) {
		return v, fmt.Errorf("enforcer: %d rules cover %s; at most %d", len(e.Rules), e.Prefix, len(v.Rules))
	}
	for i, r := range e.Rules {
		pr, err := kernelPortRule(r)
		if err != nil {
			return v, err
		}
		v.Rules[i] = pr
	}
	return v, nil
}

// exeIdentity is the (inode, device) of an executable in the kernel's own
// device encoding (major<<20 | minor), as the process programs capture it at
// exec time.
func exeIdentity(path string) (gateExeId, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return gateExeId{}, fmt.Errorf("enforcer: exe %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return gateExeId{}, fmt.Errorf("enforcer: exe %s is not a regular file", path)
	}
	return gateExeId{Ino: st.Ino, Dev: unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)}, nil
}

// PidBinding returns the session binding of a process, if it has one.
func (g *Gate) PidBinding(tgid uint32) (uint32, uint64, bool) {
	var b gateBinding
	if err := g.objs.PidSessions.Lookup(tgid, &b); err != nil {
		return 0, 0, false
	}
	return b.Slot, b.Gen, true
}

// PidsOf lists the processes bound to the session in slot/gen, including
// those that inherited the binding on fork.
func (g *Gate) PidsOf(slot uint32, gen uint64) ([]uint32, error) {
	if g.tasks != nil {
		return g.tasks.pidsOf(slot, gen)
	}
	return g.pidsOfTable(slot, gen)
}

// TaskIterator reports nil where PidsOf walks the host's tasks with the BPF
// iterator, else why it reads the whole pid table instead.
func (g *Gate) TaskIterator() error { return g.tasksErr }

// PidListing says how PidsOf finds processes: by walking the host's tasks,
// or, without the kernel's BTF, the whole pid table.
func (g *Gate) PidListing() string {
	if g.tasks != nil {
		return "bpf task iterator"
	}
	return fmt.Sprintf("pid table walk (task iterator: %v)", g.tasksErr)
}

// pidsOfTable is PidsOf from the pid table: its whole capacity is read.
func (g *Gate) pidsOfTable(slot uint32, gen uint64) ([]uint32, error) {
	var out []uint32
	err := each(g.objs.PidSessions, func(tgid *uint32, b *gateBinding) {
		if b.Slot == slot && b.Gen == gen {
			out = append(out, *tgid)
		}
	})
	return out, err
}
