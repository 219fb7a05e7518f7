package enforcer

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/agentfence/agentfence/scope"
)

// The hold's binding (bpf/podhold.c): a cgroup bound to it belongs to no
// session and is denied everything. Records of a held pod carry this slot
// and generation.
const (
	HoldSlot = uint32(podholdAfHoldAF_HOLD_SLOT)
	HoldGen  = uint64(podholdAfHoldAF_HOLD_GEN)
)

// holdBinding is the hold's binding as the maps store it.
var holdBinding = gateBinding{Slot: HoldSlot, Gen: HoldGen}

// podHold holds new pod cgroups at deny until the daemon classifies them
// (bpf/podhold.c).
type podHold struct {
	objs  podholdObjects
	links []link.Link
}

// loadPodHold loads the hold programs on the gate's cgroup_sessions and
// attaches them (pinned under linkDir when set; pod_parents under mapDir,
// so that the hold outlives the daemon as the gate does).
func loadPodHold(gate *gateObjects, mapDir, linkDir string) (_ *podHold, err error) {
	spec, err := loadPodhold()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load pod hold spec: %w", err)
	}
	opts := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"cgroup_sessions": gate.CgroupSessions}}
	if mapDir != "" {
		spec.Maps["pod_parents"].Pinning = ebpf.PinByName
		opts.Maps.PinPath = mapDir
	}
	h := &podHold{}
	if err := spec.LoadAndAssign(&h.objs, &opts); err != nil {
		return nil, fmt.Errorf("enforcer: load pod hold programs: %w", err)
	}
	defer func() {
		if err != nil {
			h.close(false)
		}
	}()
	for _, a := range []struct {
		tp   string
		prog *ebpf.Program
	}{{"cgroup_mkdir", h.objs.AfPodMkdir}, {"cgroup_rmdir", h.objs.AfPodRmdir}} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a.tp, Program: a.prog})
		if err != nil {
			return nil, fmt.Errorf("enforcer: attach raw_tp/%s: %w", a.tp, err)
		}
		h.links = append(h.links, l)
		if err := pinInPlace(l, linkDir, "pod_"+a.tp); err != nil {
			return nil, err
		}
	}
	return h, nil
}

func (h *podHold) close(pinned bool) error {
	if h == nil {
		return nil
	}
	return errors.Join(closeLinks(h.links, pinned), h.objs.Close())
}

// errNoHold is returned where the hold programs did not load.
func (g *Gate) errNoHold() error {
	return fmt.Errorf("enforcer: pods cannot be held on this host: %w", g.holdErr)
}

// HoldPods makes the kernel hold every cgroup made from now on directly in
// one of parents (the kubelet's QoS cgroups, by id); pod_parents becomes
// exactly parents. Cgroups held already stay held until released.
func (g *Gate) HoldPods(parents []uint64) error {
	if g.hold == nil {
		return g.errNoHold()
	}
	if len(parents) > 0 {
		// No scope is ever written for the hold's slot: its members
		// match no rule, DNS included.
		if err := g.PutSession(HoldSlot, SessionState{Gen: HoldGen, State: StateActive, Mode: ModeEnforce, DNS: scope.DNSNone}); err != nil {
			return err
		}
	}
	want := map[uint64]bool{}
	for _, id := range parents {
		want[id] = true
		if err := g.hold.objs.PodParents.Update(id, holdBinding, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("enforcer: hold pods made in cgroup %d: %w", id, err)
		}
	}
	var stale []uint64
	var id uint64
	var b gateBinding
	for it := g.hold.objs.PodParents.Iterate(); it.Next(&id, &b); {
		if !want[id] {
			stale = append(stale, id)
		}
	}
	for _, id := range stale {
		if err := g.hold.objs.PodParents.Delete(id); err != nil && !isNotExist(err) {
			return fmt.Errorf("enforcer: stop holding pods made in cgroup %d: %w", id, err)
		}
	}
	return nil
}

// Unhold stops holding new pods and releases every held cgroup: for a
// daemon that no longer follows a cluster, which would release none.
func (g *Gate) Unhold() error {
	if g.hold == nil {
		return nil
	}
	if err := g.HoldPods(nil); err != nil {
		return err
	}
	var held []uint64
	var id uint64
	var b gateBinding
	for it := g.objs.CgroupSessions.Iterate(); it.Next(&id, &b); {
		if b == holdBinding {
			held = append(held, id)
		}
	}
	for _, id := range held {
		if _, err := g.ReleaseCgroup(id); err != nil {
			return err
		}
	}
	return nil
}

// HoldCgroup holds a cgroup bound to nothing (a pod made before the hold
// began) and reports whether it did; a bound one is left as it is.
func (g *Gate) HoldCgroup(id uint64) (bool, error) {
	err := g.objs.CgroupSessions.Update(id, holdBinding, ebpf.UpdateNoExist)
	if errors.Is(err, ebpf.ErrKeyExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("enforcer: hold cgroup %d: %w", id, err)
	}
	return true, nil
}

// ReleaseCgroup lets a held cgroup go, and reports whether it was held; a
// cgroup bound to a session is left alone. The caller serialises it with
// BindCgroup (the kernel only ever adds holds to unbound cgroups).
func (g *Gate) ReleaseCgroup(id uint64) (bool, error) {
	var b gateBinding
	if err := g.objs.CgroupSessions.Lookup(id, &b); err != nil {
		if isNotExist(err) {
			return false, nil
		}
		return false, fmt.Errorf("enforcer: read cgroup %d: %w", id, err)
	}
	if b != holdBinding {
		return false, nil
	}
	if err := g.objs.CgroupSessions.Delete(id); err != nil && !isNotExist(err) {
		return false, fmt.Errorf("enforcer: release cgroup %d: %w", id, err)
	}
	return true, nil
}

// HoldStats are the hold programs' counters since they loaded.
type HoldStats struct {
	Held   uint64 // new pod cgroups bound to the hold
	Failed uint64 // new pod cgroups left unheld: cgroup_sessions was full
	Gone   uint64 // held cgroups removed
}

// HoldStats reads the counters; zero where the hold did not load.
func (g *Gate) HoldStats() (HoldStats, error) {
	if g.hold == nil {
		return HoldStats{}, nil
	}
	sum := func(k podholdAfHoldStat) (uint64, error) {
		var per []uint64
		if err := g.hold.objs.HoldStats.Lookup(uint32(k), &per); err != nil {
			return 0, fmt.Errorf("enforcer: read hold stats: %w", err)
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		return n, nil
	}
	var s HoldStats
	var errs [3]error
	s.Held, errs[0] = sum(podholdAfHoldStatAF_HOLD_HELD)
	s.Failed, errs[1] = sum(podholdAfHoldStatAF_HOLD_FAILED)
	s.Gone, errs[2] = sum(podholdAfHoldStatAF_HOLD_GONE)
	return s, errors.Join(errs[:]...)
}
