package enforcer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/scope"
)

// A pinned gate outlives the process that loaded it, and the next Load
// adopts it without attaching twice; Uninstall ends it.
func TestPinnedGateSurvivesAndIsAdopted(t *testing.T) {
	root, pins := pinSetup(t)
	before := kerneltest.Attached(t, root)

	g, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	if g.Adopted() {
		t.Fatal("fresh pins reported as adopted")
	}
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := filepath.Join(root, "agentfence-test-pin")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(cg)
	bindCgroupSession(t, g, cg, 2, allowed.String())
	probe := func() []kerneltest.Result {
		return kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other})
	}
	expect(t, probe(), "ok", "EPERM")

	// The loader goes away (as a kill -9 would leave it): still enforced.
	g.Close()
	expect(t, probe(), "ok", "EPERM")

	g2, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.Adopted() {
		t.Error("second load did not adopt the pins")
	}
	if got := kerneltest.Attached(t, root); got != before+1 {
		t.Errorf("connect4 programs: %d, want %d (no double attachment)", got, before+1)
	}
	if st, err := g2.Session(2); err != nil || st.Gen != 1 || st.State != StateActive {
		t.Errorf("adopted session slot: %+v %v", st, err)
	}
	expect(t, probe(), "ok", "EPERM")
	g2.Close()

	if err := Uninstall(pins); err != nil {
		t.Fatal(err)
	}
	if got := kerneltest.Attached(t, root); got != before {
		t.Errorf("connect4 programs after uninstall: %d, want %d", got, before)
	}
	expect(t, probe(), "ok", "ok")
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left: %v", err)
	}
}

// bindCgroupSession makes slot an active session of generation 1 whose
// scope is rule, and binds the cgroup cg to it, as a pinned gate's first
// loader does.
func bindCgroupSession(t *testing.T, g *Gate, cg string, slot uint32, rule string) {
	t.Helper()
	id, err := cgroupv2.ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := scope.Parse(rule)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := scope.Compile([]scope.Rule{r})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.WriteScope(slot, 1, entries); err != nil {
		t.Fatal(err)
	}
	if err := g.PutSession(slot, SessionState{Gen: 1, State: StateActive}); err != nil {
		t.Fatal(err)
	}
	if err := g.BindCgroup(id, slot, 1); err != nil {
		t.Fatal(err)
	}
}

// The hostname programs are attached per cgroup, counted, pinned with the
// gate, adopted by the next Load without a second attachment, and dropped
// by PruneHostnameHooks when no session claims them again.
func TestHostnameHooksPinnedAndAdopted(t *testing.T) {
	root, pins := pinSetup(t)
	base := filepath.Join(root, "agentfence-test-hooks")
	kept, dropped := filepath.Join(base, "kept"), filepath.Join(base, "dropped")
	for _, cg := range []string{kept, dropped} {
		if err := os.MkdirAll(cg, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.Remove(kept); os.Remove(dropped); os.Remove(base) })
	rootIngress := kerneltest.AttachedOf(t, root, ebpf.AttachCGroupInetIngress)
	on := func(cg string) [2]int {
		return [2]int{kerneltest.AttachedOf(t, cg, ebpf.AttachCGroupInetIngress), kerneltest.AttachedOf(t, cg, ebpf.AttachCGroupInetEgress)}
	}

	g, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	// The gate's own ingress program (gate_ingress) is at the root.
	rootIngress++
	if got := kerneltest.AttachedOf(t, root, ebpf.AttachCGroupInetIngress); got != rootIngress {
		t.Errorf("Load attached %d ingress programs at the root besides the gate's; the hostname programs go only where sessions need them", got-rootIngress)
	}
	for _, cg := range []string{kept, kept, dropped} {
		if err := g.HookHostnames(cg); err != nil {
			t.Fatal(err)
		}
	}
	if got := on(kept); got != [2]int{1, 1} {
		t.Errorf("hooked twice: %v programs, want one of each", got)
	}
	// Counted: the first unhook of two leaves it attached.
	if err := g.UnhookHostnames(kept); err != nil {
		t.Fatal(err)
	}
	if got := on(kept); got != [2]int{1, 1} {
		t.Errorf("after one of two unhooks: %v", got)
	}
	// An older gate attached the hostname programs at the root under the
	// gate's own link names.
	for _, a := range g.hookPrograms() {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: a.typ, Program: a.prog})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Pin(filepath.Join(g.linkDir(), a.name)); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	g.Close()
	if got := on(kept); got != [2]int{1, 1} {
		t.Errorf("pinned hooks after the loader closed: %v", got)
	}

	g2, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if err := g2.HookHostnames(kept); err != nil {
		t.Fatal(err)
	}
	rootID, _ := cgroupv2.ID(root)
	if _, err := os.Stat(g2.hookPin(rootID, 0)); err != nil {
		t.Errorf("the older gate's root attachment was not adopted: %v", err)
	}
	if err := g2.PruneHostnameHooks(); err != nil {
		t.Fatal(err)
	}
	if got := on(kept); got != [2]int{1, 1} {
		t.Errorf("claimed hook: %v programs, want one of each (adopted, not attached again)", got)
	}
	if got := on(dropped); got != [2]int{0, 0} {
		t.Errorf("unclaimed hook after prune: %v programs, want none", got)
	}
	if got := kerneltest.AttachedOf(t, root, ebpf.AttachCGroupInetIngress); got != rootIngress {
		t.Errorf("unclaimed root attachment after prune: %d ingress programs, want %d", got, rootIngress)
	}
	if err := g2.UnhookHostnames(kept); err != nil {
		t.Fatal(err)
	}
	if got := on(kept); got != [2]int{0, 0} {
		t.Errorf("after the last unhook: %v", got)
	}
	if left, _ := filepath.Glob(filepath.Join(pins, "links", "hostnames", "*")); len(left) != 0 {
		t.Errorf("pins left: %v", left)
	}
	if err := Uninstall(pins); err != nil {
		t.Fatal(err)
	}
}

// pinSetup returns the cgroup v2 root and a pin directory on a bpffs
// mounted for the test alone.
func pinSetup(t *testing.T) (root, pins string) {
	t.Helper()
	privtest.RequireRoot(t)
	root, err := cgroupv2.Root()
	if err != nil {
		privtest.Unavailable(t, err.Error())
	}
	mnt := privtest.BPFFS(t)
	return root, filepath.Join(mnt, "agentfence")
}

// A daemon that comes back on another boundary layer (the BPF LSM turned
// off and on across a reboot keeps no pins, but a changed option does)
// removes the earlier layer's pinned links, so the two never both refuse
// and record; its own layer's links replace theirs by name.
func TestBoundaryLayerChangeUnpinsTheOld(t *testing.T) {
	root, pins := pinSetup(t)
	pinned := func() []string {
		entries, err := os.ReadDir(filepath.Join(pins, "links"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			if linkName(boundaryProgAfSysExit) == e.Name() || strings.HasPrefix(e.Name(), "lsm_") || strings.HasPrefix(e.Name(), "fmod_") {
				names = append(names, e.Name())
			}
		}
		return names
	}
	g, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	layer, _ := g.SocketFamilies()
	strongest := pinned()
	g.Close()
	if !layer.Refuses() {
		if err := Uninstall(pins); err != nil {
			t.Fatal(err)
		}
		t.Skipf("no hook layer on this host (%s): nothing to unpin", layer)
	}
	if len(strongest) != 5 {
		t.Errorf("%s pinned %v, want its four hooks and the syscall exit", layer, strongest)
	}
	g, err = Load(Options{CgroupRoot: root, PinPath: pins, Boundary: FamiliesSyscallExit})
	if err != nil {
		t.Fatal(err)
	}
	got := pinned()
	g.Close()
	if err := Uninstall(pins); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"sys_exit"}) {
		t.Errorf("after %s then syscall_exit, pinned %v, want [sys_exit]", layer, got)
	}
}

// A node upgraded across a change of ring size adopts the ring its running
// programs write to, pinned at the earlier size, instead of refusing it as
// incompatible; the programs that share it (the boundary layer, the
// process and TLS programs) are sized to it too.
func TestPinnedRingOfAnotherSizeAdopted(t *testing.T) {
	root, pins := pinSetup(t)
	fresh, err := Load(Options{CgroupRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	layer, _ := fresh.SocketFamilies()
	size := fresh.Events().MaxEntries() * 4
	fresh.Close()

	if err := os.MkdirAll(filepath.Join(pins, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Uninstall(pins) })
	earlier, err := ebpf.NewMap(&ebpf.MapSpec{Name: "gate_events", Type: ebpf.RingBuf, MaxEntries: size})
	if err != nil {
		t.Fatal(err)
	}
	if err := earlier.Pin(filepath.Join(pins, "maps", "gate_events")); err != nil {
		t.Fatal(err)
	}
	earlier.Close()

	g, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatalf("a pinned ring of %d bytes refused: %v", size, err)
	}
	defer g.Close()
	if got := g.Events().MaxEntries(); got != size {
		t.Errorf("the gate's ring is %d bytes, want the pinned %d", got, size)
	}
	if got, err := g.SocketFamilies(); got != layer {
		t.Errorf("boundary layer %v (%v) beside the pinned ring, want %v as without pins", got, err, layer)
	}
}
