package enforcer

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/bpffs"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/gatetest"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/scope"
)

// A pinned gate outlives the process that loaded it, and the next Load
// adopts it without attaching twice; Uninstall ends it.
func TestPinnedGateSurvivesAndIsAdopted(t *testing.T) {
	privtest.RequireRoot(t)
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	if err := bpffs.Ensure(mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	pins := filepath.Join(mnt, "agentfence")
	before := gatetest.Attached(t, root)

	g, err := Load(Options{CgroupRoot: root, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	if g.Adopted() {
		t.Fatal("fresh pins reported as adopted")
	}
	allowed := gatetest.Listen(t, "tcp4", "127.0.0.1:0")
	other := gatetest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := filepath.Join(root, "agentfence-test-pin")
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(cg)
	id, _ := cgroupv2.ID(cg)
	r, _ := scope.Parse(allowed.String())
	entries, _ := scope.Compile([]scope.Rule{r})
	if err := g.WriteScope(2, 1, entries); err != nil {
		t.Fatal(err)
	}
	if err := g.PutSession(2, SessionState{Gen: 1, State: StateActive}); err != nil {
		t.Fatal(err)
	}
	if err := g.BindCgroup(id, 2, 1); err != nil {
		t.Fatal(err)
	}
	probe := func() []gatetest.Result {
		return gatetest.Run(t, cg, gatetest.Options{}, "tcp "+allowed.String(), "tcp "+other.String())
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
	if got := gatetest.Attached(t, root); got != before+1 {
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
	if got := gatetest.Attached(t, root); got != before {
		t.Errorf("connect4 programs after uninstall: %d, want %d", got, before)
	}
	expect(t, probe(), "ok", "ok")
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left: %v", err)
	}
}
