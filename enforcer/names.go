package enforcer

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/scope"
)

// Hostname scopes (docs/hostnames.md). The gate consults the learned
// addresses at connect; the hostname programs, loaded and attached with the
// gate, learn them from DNS answers and check TLS SNI.

// Hooks and reasons of hostname decisions (continuing Hook and Reason).
const (
	HookDNS = Hook(gateAfHookAF_HOOK_DNS) // a DNS answer delivered to a session socket
	HookSNI = Hook(gateAfHookAF_HOOK_SNI) // the first data segment of a TCP connection

	ReasonSNIMismatch   = Reason(gateAfReasonAF_REASON_SNI_MISMATCH)   // the SNI names a host not in scope
	ReasonSNIMissing    = Reason(gateAfReasonAF_REASON_SNI_MISSING)    // not TLS, or a ClientHello without SNI
	ReasonSNIIncomplete = Reason(gateAfReasonAF_REASON_SNI_INCOMPLETE) // the SNI is not within the first segment
	ReasonNameUnscoped  = Reason(gateAfReasonAF_REASON_NAME_UNSCOPED)  // a DNS answer for a name not in scope

	// DNS queries of members refused by the session's dns mode
	// (HostDNSQuery events).
	ReasonDNSUnscoped  = Reason(gateAfReasonAF_REASON_DNS_UNSCOPED)  // scoped: no hostname rule covers the question name
	ReasonDNSNone      = Reason(gateAfReasonAF_REASON_DNS_NONE)      // none: no query may leave
	ReasonDNSMalformed = Reason(gateAfReasonAF_REASON_DNS_MALFORMED) // not one standard query with a readable question
)

// ReasonString is the audit spelling of a reason (outcome.reason).
func ReasonString(r Reason) string {
	switch r {
	case ReasonRule:
		return "rule"
	case ReasonNoRule:
		return "no_rule"
	case ReasonExpired:
		return "expired"
	case ReasonRevoked:
		return "revoked"
	case ReasonQuarantined:
		return "quarantined"
	case ReasonSocketType:
		return "socket_type"
	case ReasonSocketFamily:
		return "socket_family"
	case ReasonSNIMismatch:
		return "sni_mismatch"
	case ReasonSNIMissing:
		return "sni_missing"
	case ReasonSNIIncomplete:
		return "sni_incomplete"
	case ReasonNameUnscoped:
		return "name_not_in_scope"
	case ReasonDNSUnscoped:
		return "dns_name_unscoped"
	case ReasonDNSNone:
		return "dns_none"
	case ReasonDNSMalformed:
		return "dns_malformed"
	}
	return fmt.Sprintf("reason_%d", r)
}

// HostnameOptions configures the hostname programs.
type HostnameOptions struct {
	// TTLMin and TTLMax clamp how long a learned address is kept: the
	// record's TTL, raised to TTLMin (so a TTL of 0 still admits the
	// connect that follows the answer) and cut to TTLMax. Defaults 30s
	// and 1h.
	TTLMin, TTLMax time.Duration
	// DNSPort is the port answers come from (default 53).
	DNSPort uint16
}

const (
	defaultTTLMin = 30 * time.Second
	defaultTTLMax = time.Hour
)

// hostnames is the hostname half of a Gate.
type hostnames struct {
	objs hostnameObjects

	mu    sync.Mutex
	names map[nameRef]string // (slot, hash) → hostname, for audit records
}

type nameRef struct {
	slot uint32
	hash uint64
}

// maxNameBook bounds the userspace hash → name book; past it, the book is
// emptied (records then lack destination.hostname until names are seen
// again).
const maxNameBook = 1 << 16

// hostnameSpec is the hostname object with its variables set, as
// loadHostnames and VerifyObjects load it.
func hostnameSpec(opts HostnameOptions) (*ebpf.CollectionSpec, error) {
	spec, err := loadHostname()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load hostname spec: %w", err)
	}
	lo, hi := opts.TTLMin, opts.TTLMax
	if lo == 0 {
		lo = defaultTTLMin
	}
	if hi == 0 {
		hi = defaultTTLMax
	}
	if lo < 0 || hi < lo {
		return nil, fmt.Errorf("enforcer: DNS TTL bounds [%s, %s] are not a range", lo, hi)
	}
	var vars hostnameVariableSpecs
	if err := spec.Assign(&vars); err != nil {
		return nil, fmt.Errorf("enforcer: hostname spec: %w", err)
	}
	if err := vars.TtlMinNs.Set(uint64(lo)); err != nil {
		return nil, fmt.Errorf("enforcer: set ttl_min_ns: %w", err)
	}
	if err := vars.TtlMaxNs.Set(uint64(hi)); err != nil {
		return nil, fmt.Errorf("enforcer: set ttl_max_ns: %w", err)
	}
	if opts.DNSPort != 0 {
		if err := vars.DnsPort.Set(opts.DNSPort); err != nil {
			return nil, fmt.Errorf("enforcer: set dns_port: %w", err)
		}
	}
	return spec, nil
}

func loadHostnames(gate *gateObjects, opts HostnameOptions) (*hostnames, error) {
	spec, err := hostnameSpec(opts)
	if err != nil {
		return nil, err
	}
	h := &hostnames{names: map[nameRef]string{}}
	// Every map the gate object defines too (data sections aside) is the
	// gate's; VerifyObjects relies on that rule.
	repl := map[string]*ebpf.Map{
		"sessions":      gate.Sessions,
		"scope4":        gate.Scope4,
		"scope6":        gate.Scope6,
		"exact4":        gate.Exact4,
		"exact6":        gate.Exact6,
		"host_names":    gate.HostNames,
		"learned":       gate.Learned,
		"session_socks": gate.SessionSocks,
		"member_socks":  gate.MemberSocks,
	}
	if err := spec.LoadAndAssign(&h.objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: verifier: %+v", ErrHostnamesRefused, ve)
		}
		return nil, fmt.Errorf("%w: %w", ErrHostnamesRefused, err)
	}
	return h, nil
}

// ErrHostnamesRefused is why hostname rules are unavailable: the kernel
// would not load the hostname programs. The gate still enforces address
// rules.
var ErrHostnamesRefused = errors.New("enforcer: the kernel refused the hostname programs")

// Hostnames reports nil where hostname rules can be enforced, else why not.
func (g *Gate) Hostnames() error { return g.hostErr }

func (h *hostnames) close() error {
	if h == nil {
		return nil
	}
	return h.objs.Close()
}

// HashName is the kernel's hash of a hostname: FNV-1a 64 over the lowercased
// name without a trailing dot. Kernel events carry it; Hostname maps it back.
func HashName(name string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c == '.' && i == len(name)-1 {
			break
		}
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

type hostGroup struct {
	key gateNameKey
	val gateNameVal
}

// hostGroups collects the hostname rules of a session's full rule list by
// name; a rule's index is its position in rules.
func hostGroups(slot uint32, gen uint64, rules []scope.Rule) ([]hostGroup, error) {
	var out []hostGroup
	idx := map[gateNameKey]int{}
	for i, r := range rules {
		if r.Host == "" {
			continue
		}
		if len(r.Host) >= len(gateNameVal{}.Name) {
			return nil, fmt.Errorf("enforcer: hostname %q is too long", r.Host)
		}
		k := gateNameKey{Slot: slot, Kind: uint32(gateAfNameKindAF_NAME_EXACT), Hash: HashName(r.Host)}
		if r.Wildcard {
			k.Kind = uint32(gateAfNameKindAF_NAME_WILDCARD)
		}
		j, ok := idx[k]
		if !ok {
			j = len(out)
			idx[k] = j
			g := hostGroup{key: k}
			g.val.Scope.Gen = gen
			g.val.Len = uint32(len(r.Host))
			for n := 0; n < len(r.Host); n++ {
				g.val.Name[n] = int8(r.Host[n])
			}
			out = append(out, g)
		} else if got := cString(out[j].val.Name[:]); got != r.Host {
			return nil, fmt.Errorf("enforcer: hostnames %q and %q have the same hash", got, r.Host)
		}
		v := &out[j].val
		if int(v.Scope.N) >= len(v.Scope.Rules) {
			return nil, fmt.Errorf("enforcer: more than %d rules name %s", len(v.Scope.Rules), r)
		}
		pr, err := kernelPortRule(r.PortRule(i))
		if err != nil {
			return nil, err
		}
		v.Scope.Rules[v.Scope.N] = pr
		v.Scope.N++
	}
	return out, nil
}

// WriteNames writes the hostname rules of the session in slot/gen. rules is
// the session's full rule list (address rules are skipped), so the rule
// indexes the kernel reports are positions in it, as for WriteScope. On
// error nothing of it is left in the maps.
func (g *Gate) WriteNames(slot uint32, gen uint64, rules []scope.Rule) error {
	groups, err := hostGroups(slot, gen, rules)
	if err != nil {
		return err
	}
	if len(groups) == 0 {
		return nil
	}
	if g.host == nil {
		// Fail closed: the session does not open without its names.
		return fmt.Errorf("enforcer: hostname rules cannot be enforced on this host: %w", g.hostErr)
	}
	for i := range groups {
		if err := g.objs.HostNames.Update(&groups[i].key, &groups[i].val, ebpf.UpdateAny); err != nil {
			for _, done := range groups[:i] {
				g.objs.HostNames.Delete(&done.key)
			}
			return fmt.Errorf("enforcer: write hostname %s: %w", cString(groups[i].val.Name[:]), err)
		}
	}
	h := g.host
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.names)+len(groups) > maxNameBook {
		clear(h.names)
	}
	for _, gr := range groups {
		if gr.key.Kind == uint32(gateAfNameKindAF_NAME_EXACT) {
			h.names[nameRef{slot, gr.key.Hash}] = cString(gr.val.Name[:])
		}
	}
	return nil
}

// DeleteNames removes the hostname entries of rules (the session's full
// list; address rules are skipped). Entries already gone are not an error.
// Addresses learned for the names stop matching at once; PurgeLearned
// frees them.
func (g *Gate) DeleteNames(slot uint32, rules []scope.Rule) error {
	groups, err := hostGroups(slot, 0, withoutExe(rules))
	if err != nil {
		return err
	}
	var errs []error
	for _, gr := range groups {
		if err := g.objs.HostNames.Delete(&gr.key); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("enforcer: delete hostname %s: %w", cString(gr.val.Name[:]), err))
		}
	}
	return errors.Join(errs...)
}

// withoutExe drops exe= from rules: deleting needs only the names, and the
// executable may be gone by then.
func withoutExe(rules []scope.Rule) []scope.Rule {
	out := make([]scope.Rule, len(rules))
	for i, r := range rules {
		r.Exe = ""
		out[i] = r
	}
	return out
}

// PurgeLearned removes every address learned for the session slot (call it
// when a session ends; a reused slot ignores them anyway, by generation).
func (g *Gate) PurgeLearned(slot uint32) error {
	var keys []gateLearnedKey
	var errs []error
	err := each(g.objs.Learned, func(k *gateLearnedKey, _ *gateLearnedVal) {
		if k.Slot == slot {
			keys = append(keys, *k)
		}
	})
	if err != nil {
		errs = append(errs, err)
	}
	for i := range keys {
		if err := g.objs.Learned.Delete(&keys[i]); err != nil && !isNotExist(err) {
			errs = append(errs, err)
		}
	}
	if h := g.host; h != nil {
		h.mu.Lock()
		for ref := range h.names {
			if ref.slot == slot {
				delete(h.names, ref)
			}
		}
		h.mu.Unlock()
	}
	return errors.Join(errs...)
}

// LearnedAddr is one address the kernel learned for a session.
type LearnedAddr struct {
	Addr netip.Addr
	// Names are the hashes of the names it was learned for, with their
	// expiry (CLOCK_BOOTTIME).
	Names   []uint64
	Expires []uint64
}

// Learned lists the live learned addresses of slot/gen.
func (g *Gate) Learned(slot uint32, gen uint64) ([]LearnedAddr, error) {
	var out []LearnedAddr
	now := bootNow()
	err := each(g.objs.Learned, func(k *gateLearnedKey, v *gateLearnedVal) {
		if k.Slot != slot || v.Gen != gen {
			return
		}
		la := LearnedAddr{Addr: learnedAddr(k.Family, k.Addr)}
		for _, n := range v.Names {
			if n.ExpiresNs > now {
				la.Names = append(la.Names, n.NameHash)
				la.Expires = append(la.Expires, n.ExpiresNs)
			}
		}
		if len(la.Names) > 0 {
			out = append(out, la)
		}
	})
	return out, err
}

// LearnedNames returns the names slot/gen learned addr for, as far as
// Hostname knows them: a single map lookup, for the records of denials.
func (g *Gate) LearnedNames(slot uint32, gen uint64, addr netip.Addr) []string {
	k := gateLearnedKey{Slot: slot, Family: 6}
	if addr = addr.Unmap(); addr.Is4() {
		k.Family = 4
		a4 := addr.As4()
		copy(k.Addr[:], a4[:])
	} else {
		k.Addr = addr.As16()
	}
	var v gateLearnedVal
	if err := g.objs.Learned.Lookup(&k, &v); err != nil || v.Gen != gen {
		return nil
	}
	var names []string
	now := bootNow()
	for _, n := range v.Names {
		if n.ExpiresNs > now {
			if name := g.Hostname(slot, n.NameHash); name != "" {
				names = append(names, name)
			}
		}
	}
	return names
}

func learnedAddr(family uint8, a [16]uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrFrom16(a)
}

// Hostname returns the name behind a hash a kernel event of slot carries
// (Event.NameHash, HostEvent.NameHash), from the session's exact hostname
// rules and the DNS answers seen through NoteHostEvent; "" if unknown.
func (g *Gate) Hostname(slot uint32, hash uint64) string {
	if hash == 0 || g.host == nil {
		return ""
	}
	g.host.mu.Lock()
	defer g.host.mu.Unlock()
	return g.host.names[nameRef{slot, hash}]
}

// NoteHostEvent remembers the name of a learned-address event, so Hostname
// can name the connects that use the address (wildcard rules).
func (g *Gate) NoteHostEvent(ev HostEvent) {
	if ev.Kind != HostDNSLearned || ev.Name == "" || g.host == nil {
		return
	}
	h := g.host
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.names) >= maxNameBook {
		clear(h.names)
	}
	h.names[nameRef{ev.Slot, ev.NameHash}] = ev.Name
}

// HostEvents is the ring buffer the hostname programs write to; nil without
// them.
func (g *Gate) HostEvents() *ebpf.Map {
	if g.host == nil {
		return nil
	}
	return g.host.objs.HostEvents
}

// HostStats are the hostname programs' counters, summed over CPUs.
type HostStats struct {
	Lost, Answers, Learned, Malformed, Unscoped, SNIOK, SNIDrop, Busy uint64
	// Members' DNS queries the dns mode let through, and refused (or
	// would have, in audit mode).
	QueryOK, QueryDrop uint64
}

// HostStats reads the per-CPU counters.
func (g *Gate) HostStats() (HostStats, error) {
	if g.host == nil {
		return HostStats{}, g.hostErr
	}
	var out [hostnameHostStatHS_MAX]uint64
	for i := range out {
		var per []uint64
		if err := g.host.objs.HostStats.Lookup(uint32(i), &per); err != nil {
			return HostStats{}, fmt.Errorf("enforcer: read hostname stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return HostStats{
		Lost: out[hostnameHostStatHS_LOST], Answers: out[hostnameHostStatHS_ANSWERS],
		Learned: out[hostnameHostStatHS_LEARNED], Malformed: out[hostnameHostStatHS_MALFORMED],
		Unscoped: out[hostnameHostStatHS_UNSCOPED], SNIOK: out[hostnameHostStatHS_SNI_OK],
		SNIDrop: out[hostnameHostStatHS_SNI_DROP], Busy: out[hostnameHostStatHS_BUSY],
		QueryOK: out[hostnameHostStatHS_QUERY_OK], QueryDrop: out[hostnameHostStatHS_QUERY_DROP],
	}, nil
}

// HostKind is what a hostname event reports.
type HostKind uint8

const (
	HostDNSLearned  = HostKind(hostnameAfHostKindAF_HOST_DNS_LEARNED)  // an address learned for an allowed name
	HostDNSUnscoped = HostKind(hostnameAfHostKindAF_HOST_DNS_UNSCOPED) // a DNS answer for a name not in scope
	HostSNI         = HostKind(hostnameAfHostKindAF_HOST_SNI)          // a failed TLS SNI check
	// HostDNSQuery: a member's DNS query the session's dns mode refuses
	// (dropped before it left, or would have been in audit mode).
	HostDNSQuery = HostKind(hostnameAfHostKindAF_HOST_DNS_QUERY)
)

// HostEvent is one hostname event, decoded.
type HostEvent struct {
	BootNS   uint64 // CLOCK_BOOTTIME
	CgroupID uint64
	Slot     uint32
	Gen      uint64
	// PID, UID, GID and Comm are of the process that last connected or
	// sent on the socket (the programs run without a task).
	PID, UID, GID uint32
	Comm          string
	Kind          HostKind
	Verdict       Verdict
	Reason        Reason
	// Name is the question name (DNS) or the SNI (HostSNI; empty if
	// there was none). For HostDNSQuery it is the name as the member sent
	// it, sanitised (SanitizeQueryName): at most MaxQueryName bytes of
	// printable ASCII, NameTruncated if there was more.
	Name          string
	NameTruncated bool
	// NameHash is HashName(Name) for DNS events; for HostSNI it is the hash
	// of the learned name the connect was allowed through.
	NameHash uint64
	// Addr is the learned address (DNSLearned), the resolver (DNSUnscoped)
	// or the TCP peer (SNI); Port is the resolver's or the peer's port.
	Addr netip.Addr
	Port uint16
	// TTL is how long a learned address is kept (clamped).
	TTL time.Duration
	// QType is the DNS question type of a DNSUnscoped or DNSQuery event.
	QType uint16
	// Protocol is IPPROTO_UDP or IPPROTO_TCP for a DNSQuery event.
	Protocol uint8
	Rule     int
}

// HostEventSize is the size of a raw hostname event.
const HostEventSize = int(unsafe.Sizeof(hostnameHostEvent{}))

// DecodeHostEvent decodes one raw record of the HostEvents ring buffer.
func DecodeHostEvent(raw []byte) (HostEvent, error) {
	if len(raw) < HostEventSize {
		return HostEvent{}, fmt.Errorf("enforcer: host event is %d bytes, want %d", len(raw), HostEventSize)
	}
	e := rawStruct[hostnameHostEvent](raw)
	n := int(e.NameLen)
	if n > len(e.Name) {
		n = len(e.Name)
	}
	name := make([]byte, 0, n)
	for _, c := range e.Name[:n] {
		if c == 0 {
			break
		}
		name = append(name, byte(c))
	}
	ev := HostEvent{
		BootNS: e.TsNs, CgroupID: e.CgroupId, Slot: e.SessionSlot, Gen: e.SessionGen,
		PID: e.Pid, UID: e.Uid, GID: e.Gid, Comm: cString(e.Comm[:]),
		Kind: HostKind(e.Kind), Verdict: Verdict(e.Verdict), Reason: Reason(e.Reason),
		Name: string(name), NameHash: e.NameHash, Port: e.Port, Rule: ruleIndex(e.Rule),
	}
	switch e.Family {
	case 4, 6:
		ev.Addr = learnedAddr(e.Family, e.Addr)
	}
	switch ev.Kind {
	case HostDNSLearned:
		ev.TTL = time.Duration(e.TtlNs)
	case HostDNSUnscoped:
		ev.QType = uint16(e.TtlNs)
	case HostDNSQuery:
		ev.QType = uint16(e.TtlNs)
		ev.Protocol = e.Protocol
		raw := make([]byte, n)
		for i, c := range e.Name[:n] {
			raw[i] = byte(c)
		}
		ev.Name, ev.NameTruncated = SanitizeQueryName(raw)
		ev.NameHash = 0
	}
	return ev, nil
}

func bootNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}
