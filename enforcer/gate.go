// Package enforcer loads the egress gate programs, attaches them at the
// cgroup v2 root and owns the policy maps they read: sessions, bindings and
// scopes. Every policy change is a map update; programs are never reloaded
// for one, so there is no window without enforcement.
package enforcer

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// Options configures Load.
type Options struct {
	// CgroupRoot is the cgroup v2 mount point the programs attach to.
	CgroupRoot string
	// MaxCgroupDepth bounds the ancestor walk (default 16, the most the
	// program supports).
	MaxCgroupDepth uint32
}

// Gate is the loaded and attached egress gate.
type Gate struct {
	objs  gateObjects
	links []link.Link
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
	spec, err := loadGate()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load spec: %w", err)
	}
	if opts.MaxCgroupDepth != 0 {
		if err := spec.Variables["max_cgroup_depth"].Set(opts.MaxCgroupDepth); err != nil {
			return nil, fmt.Errorf("enforcer: set max_cgroup_depth: %w", err)
		}
	}
	g := &Gate{}
	if err := spec.LoadAndAssign(&g.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("enforcer: verifier rejected the gate: %+v", ve)
		}
		return nil, fmt.Errorf("enforcer: load gate: %w", err)
	}
	attach := []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{
		{g.objs.GateConnect4, ebpf.AttachCGroupInet4Connect},
		{g.objs.GateConnect6, ebpf.AttachCGroupInet6Connect},
		{g.objs.GateSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{g.objs.GateSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{g.objs.GateSockCreate, ebpf.AttachCGroupInetSockCreate},
	}
	for _, a := range attach {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: opts.CgroupRoot, Attach: a.typ, Program: a.prog})
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("enforcer: attach %s to %s: %w", a.typ, opts.CgroupRoot, err)
		}
		g.links = append(g.links, l)
	}
	return g, nil
}

// Close detaches the programs and releases the maps.
func (g *Gate) Close() error {
	var errs []error
	for _, l := range g.links {
		errs = append(errs, l.Close())
	}
	g.links = nil
	errs = append(errs, g.objs.Close())
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
	var out [4]uint64
	for i := range out {
		var per []uint64
		if err := g.objs.GateStats.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("enforcer: read stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return Stats{Lost: out[0], Allowed: out[1], Denied: out[2], WouldDeny: out[3]}, nil
}

func isNotExist(err error) bool {
	return errors.Is(err, ebpf.ErrKeyNotExist) || errors.Is(err, os.ErrNotExist)
}
