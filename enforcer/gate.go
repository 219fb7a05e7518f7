// Package enforcer loads the egress gate programs, attaches them at the
// cgroup v2 root (the hostname programs only where sessions need them,
// hooks.go) and owns the policy maps they read: sessions, bindings and
// scopes. Every policy change is a map update; programs are never reloaded
// for one, so there is no window without enforcement.
package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/agentfence/agentfence/internal/ringsize"
)

// Options configures Load.
type Options struct {
	// CgroupRoot is the cgroup v2 mount point the programs attach to.
	CgroupRoot string
	// PinPath is a directory on bpffs (e.g. /sys/fs/bpf/agentfence). When
	// set, maps and links are pinned there: the gate keeps enforcing after
	// the daemon exits or dies, and the next Load adopts the pins, swapping
	// in its programs atomically. Empty means nothing is pinned and Close
	// detaches everything.
	PinPath string
	// MaxCgroupDepth bounds the ancestor walk (default 16, the most the
	// program supports).
	MaxCgroupDepth uint32
	// Hostnames configures DNS learning and the SNI check (names.go).
	Hostnames HostnameOptions
	// NoHostnames loads the gate without the hostname programs, as on a
	// kernel whose verifier refuses them: sessions with hostname rules
	// are then refused, address rules work. For tests of that fallback.
	NoHostnames bool
	// Aggregate counts repeats of an allowed connect or send within a
	// window instead of emitting each (aggregate.go); FlushRepeats ends a
	// window.
	Aggregate bool
	// Boundary is the strongest layer of the boundary programs
	// (boundary.go) to try, as on a host without the stronger ones: for
	// tests of each layer. "" is the strongest the host has.
	Boundary FamilyLayer
}

// Gate is the loaded and attached egress gate.
type Gate struct {
	objs gateObjects
	// tasks lists pid-bound processes; nil (and why in tasksErr) where
	// the kernel has no BTF for the task iterator.
	tasks    *taskLister
	tasksErr error
	links    []link.Link
	pinPath  string
	adopted  bool
	// aggCurrent is the repeat map the programs count into (agg_current).
	aggCurrent uint32
	// host holds the DNS learning and SNI programs (names.go); nil, and
	// why in hostErr, where the kernel refused them.
	host    *hostnames
	hostErr error
	hooks   hooks // where the hostname programs are attached (hooks.go)
	// fam handles socket families no cgroup hook sees (boundary.go);
	// nil, and why in famErr, where the kernel refused its programs.
	fam    *families
	famErr error
	// hold holds new Kubernetes pods at deny (podhold.go); nil, and why
	// in holdErr, where the kernel refused its programs.
	hold    *podHold
	holdErr error
}

// attachment is one program and where it hooks in.
type attachment struct {
	name string
	prog *ebpf.Program
	typ  ebpf.AttachType
}

func (g *Gate) attachments() []attachment {
	out := []attachment{
		{"connect4", g.objs.GateConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", g.objs.GateConnect6, ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", g.objs.GateSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", g.objs.GateSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{"sock_create", g.objs.GateSockCreate, ebpf.AttachCGroupInetSockCreate},
		{"bind4", g.objs.GateBind4, ebpf.AttachCGroupInet4Bind},
		{"bind6", g.objs.GateBind6, ebpf.AttachCGroupInet6Bind},
		{"ingress", g.objs.GateIngress, ebpf.AttachCGroupInetIngress},
	}
	if g.host != nil {
		// At the root like the gate, not where the other hostname
		// programs go: every session's dns mode is judged, with hostname
		// rules or without. A non-member's packet leaves at the first
		// storage lookup.
		out = append(out, attachment{"dns_egress", g.host.objs.DnsEgress, ebpf.AttachCGroupInetEgress})
	}
	return out
}

// gateSpec is the gate object with its variables set, as Load and
// VerifyObjects load it.
func gateSpec(maxDepth uint32, dnsPort uint16, aggregate bool) (*ebpf.CollectionSpec, error) {
	spec, err := loadGate()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load spec: %w", err)
	}
	var vars gateVariableSpecs
	if err := spec.Assign(&vars); err != nil {
		return nil, fmt.Errorf("enforcer: gate spec: %w", err)
	}
	if maxDepth != 0 {
		if err := vars.MaxCgroupDepth.Set(maxDepth); err != nil {
			return nil, fmt.Errorf("enforcer: set max_cgroup_depth: %w", err)
		}
	}
	if dnsPort != 0 {
		if err := vars.DnsPort.Set(dnsPort); err != nil {
			return nil, fmt.Errorf("enforcer: set dns_port: %w", err)
		}
	}
	if !aggregate {
		if err := vars.Aggregate.Set(uint8(0)); err != nil {
			return nil, fmt.Errorf("enforcer: set aggregate: %w", err)
		}
	}
	return spec, nil
}

// Load loads the gate programs and attaches them to opts.CgroupRoot with BPF
// links (multi-attach, so other cgroup programs keep working).
func Load(opts Options) (*Gate, error) {
	if opts.CgroupRoot == "" {
		return nil, errors.New("enforcer: no cgroup root")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("enforcer: remove memlock limit: %w", err)
	}
	spec, err := gateSpec(opts.MaxCgroupDepth, opts.Hostnames.DNSPort, opts.Aggregate)
	if err != nil {
		return nil, err
	}
	g := &Gate{pinPath: opts.PinPath, hooks: hooks{byPath: map[string]*hook{}, adopted: map[uint64]*hook{}}}
	var collOpts ebpf.CollectionOptions
	if opts.PinPath != "" {
		if err := os.MkdirAll(g.mapDir(), 0o700); err != nil {
			return nil, fmt.Errorf("enforcer: pin directory (is bpffs mounted at %s?): %w", filepath.Dir(opts.PinPath), err)
		}
		if err := os.MkdirAll(g.linkDir(), 0o700); err != nil {
			return nil, fmt.Errorf("enforcer: pin directory: %w", err)
		}
		_, err := os.Stat(filepath.Join(g.mapDir(), "sessions"))
		g.adopted = err == nil
		for _, m := range spec.Maps {
			if m.Type != ebpf.Array || m.Name == "sessions" {
				m.Pinning = ebpf.PinByName
			}
		}
		collOpts.Maps.PinPath = g.mapDir()
		if err := ringsize.FromPins(spec, g.mapDir()); err != nil {
			return nil, fmt.Errorf("enforcer: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&g.objs, &collOpts); err != nil {
		var ve *ebpf.VerifierError
		switch {
		case errors.As(err, &ve):
			return nil, fmt.Errorf("enforcer: verifier rejected the gate: %+v", ve)
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("enforcer: the maps pinned in %s come from an incompatible version: %w "+
				"(`agentfenced --uninstall` removes them and ends enforcement of running sessions)", g.mapDir(), err)
		}
		return nil, fmt.Errorf("enforcer: load gate: %w", err)
	}
	switch {
	case opts.NoHostnames:
		g.hostErr = errors.New("hostname programs not loaded (NoHostnames)")
	default:
		g.host, err = loadHostnames(&g.objs, opts.Hostnames)
		if errors.Is(err, ErrHostnamesRefused) {
			// Optional: the gate enforces address rules without them.
			g.hostErr, err = err, nil
		}
		if err != nil {
			g.objs.Close()
			return nil, err
		}
	}
	g.tasks, g.tasksErr = loadTaskLister(g.objs.PidSessions)
	if err := g.attach(opts.CgroupRoot); err != nil {
		g.Close()
		return nil, err
	}
	linkDir, mapDir := "", ""
	if opts.PinPath != "" {
		linkDir, mapDir = g.linkDir(), g.mapDir()
	}
	// Optional: without it, `agentfence run`'s seccomp filter and dropped
	// capabilities still refuse, but nothing records or sees bound members.
	g.fam, g.famErr = loadFamilies(&g.objs, linkDir, opts.Boundary)
	// Optional too: only a daemon that follows a cluster holds pods.
	g.hold, g.holdErr = loadPodHold(&g.objs, mapDir, linkDir)
	if opts.PinPath != "" && g.host != nil {
		if err := g.adoptHooks(opts.CgroupRoot); err != nil {
			g.Close()
			return nil, err
		}
	}
	return g, nil
}

func (g *Gate) mapDir() string  { return filepath.Join(g.pinPath, "maps") }
func (g *Gate) linkDir() string { return filepath.Join(g.pinPath, "links") }

// attach attaches every gate program (and the hostname programs where they
// were detached by detach). A pinned link from an earlier daemon is
// kept and its program swapped for ours in one bpf_link_update, so the hook
// is never empty and never doubled.
func (g *Gate) attach(root string) error {
	for _, a := range g.attachments() {
		var l link.Link
		path := filepath.Join(g.linkDir(), a.name)
		if g.pinPath != "" {
			if old, err := link.LoadPinnedLink(path, nil); err == nil {
				if err := old.Update(a.prog); err != nil {
					old.Close()
					return fmt.Errorf("enforcer: replace program of pinned link %s: %w", path, err)
				}
				l = old
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("enforcer: load pinned link %s: %w", path, err)
			}
		}
		if l == nil {
			var err error
			l, err = link.AttachCgroup(link.CgroupOptions{Path: root, Attach: a.typ, Program: a.prog})
			if err != nil {
				return fmt.Errorf("enforcer: attach %s to %s: %w", a.typ, root, err)
			}
			if g.pinPath != "" {
				if err := l.Pin(path); err != nil {
					l.Close()
					return fmt.Errorf("enforcer: pin link %s: %w", path, err)
				}
			}
		}
		g.links = append(g.links, l)
	}
	return g.reattachHooks()
}

// detach closes this process's links (unpinned ones detach).
func (g *Gate) detach() {
	for _, l := range g.links {
		if g.pinPath == "" {
			release(l)
		} else {
			l.Close()
		}
	}
	g.links = nil
	g.closeHooks()
}

// release detaches l at once where the kernel can (BPF_LINK_DETACH, 5.9+),
// then closes it. Closing the last reference detaches too, but 5.10 did
// that 13–26 ms later: an uninstall returned with the gate still attached.
// A link that cannot be detached is already (its cgroup is gone) or the
// kernel lacks the command, where Close is all there is.
func release(l link.Link) error {
	_ = l.Detach()
	return l.Close()
}

// Adopted reports whether Load found pins of an earlier daemon and took
// them over.
func (g *Gate) Adopted() bool { return g.adopted }

// Close releases this process's handles. Pinned links stay attached and
// pinned maps stay in place, so enforcement goes on; without pinning this
// detaches the gate.
func (g *Gate) Close() error {
	g.detach()
	var err error
	if g.tasks != nil {
		err = g.tasks.close()
	}
	return errors.Join(err, g.host.close(), g.fam.close(g.pinPath != ""), g.hold.close(g.pinPath != ""), g.objs.Close())
}

// Uninstall removes every pin and detaches the gate: enforcement of all
// sessions ends.
func Uninstall(pinPath string) error {
	var errs []error
	links, _ := filepath.Glob(filepath.Join(pinPath, "links", "*"))
	hooks, _ := filepath.Glob(filepath.Join(pinPath, "links", "hostnames", "*"))
	for _, p := range append(links, hooks...) {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			continue
		}
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, l.Unpin(), release(l))
	}
	errs = append(errs, os.RemoveAll(pinPath))
	return errors.Join(errs...)
}

// Events is the ring buffer the gate writes decisions to.
func (g *Gate) Events() *ebpf.Map { return g.objs.GateEvents }

// PidSessions is the tgid → session binding map, shared with the process
// programs that inherit bindings on fork.
func (g *Gate) PidSessions() *ebpf.Map { return g.objs.PidSessions }

// ProcExe is the tgid → executable identity map, written at exec by the
// process programs and read by exe-bound rules.
func (g *Gate) ProcExe() *ebpf.Map { return g.objs.ProcExe }

// Stats are the gate's kernel counters, summed over CPUs.
type Stats struct {
	Lost, Allowed, Denied, WouldDeny uint64
}

// Stats reads the per-CPU counters.
func (g *Gate) Stats() (Stats, error) {
	var out [gateAfStatAF_STAT_MAX]uint64
	for i := range out {
		var per []uint64
		if err := g.objs.GateStats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("enforcer: read stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return Stats{Lost: out[gateAfStatAF_STAT_LOST], Allowed: out[gateAfStatAF_STAT_ALLOWED],
		Denied: out[gateAfStatAF_STAT_DENIED], WouldDeny: out[gateAfStatAF_STAT_WOULD_DENY]}, nil
}

func isNotExist(err error) bool {
	return errors.Is(err, ebpf.ErrKeyNotExist) || errors.Is(err, os.ErrNotExist)
}

// MapUsage is the number of entries and the capacity of one map.
type MapUsage struct {
	Name              string
	Entries, Capacity int
}

// Usage counts the entries of the policy maps, for metrics. It walks the
// maps, so call it at scrape intervals, not per event.
func (g *Gate) Usage() []MapUsage {
	count := func(m *ebpf.Map) int {
		n := 0
		it := m.Iterate()
		var k, v []byte
		for it.Next(&k, &v) {
			n++
		}
		return n
	}
	active := 0
	var s gateSession
	var slot uint32
	it := g.objs.Sessions.Iterate()
	for it.Next(&slot, &s) {
		if s.State != uint32(StateFree) {
			active++
		}
	}
	out := []MapUsage{{"sessions", active, int(g.objs.Sessions.MaxEntries())}}
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{{"cgroup_sessions", g.objs.CgroupSessions}, {"pid_sessions", g.objs.PidSessions}, {"proc_exe", g.objs.ProcExe},
		{"scope4", g.objs.Scope4}, {"scope6", g.objs.Scope6}, {"exact4", g.objs.Exact4}, {"exact6", g.objs.Exact6},
		{"binds", g.objs.Binds}} {
		out = append(out, MapUsage{m.name, count(m.m), int(m.m.MaxEntries())})
	}
	return out
}
