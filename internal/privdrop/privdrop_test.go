package privdrop

import (
	"bytes"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/privtest"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Cap{
		"CAP_NET_RAW": NetRaw, "net_raw": NetRaw, "Net_Raw": NetRaw, "cap_net_raw": NetRaw, " NET_RAW ": NetRaw,
		"sys_admin": SysAdmin, "CAP_BPF": BPF, "perfmon": Perfmon, "chown": 0, "CAP_CHECKPOINT_RESTORE": 40,
	} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "CAP_", "bogus", "net-raw", "NET_RAW2", "13", "CAP_CAP_NET_RAW", "net raw"} {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(in)) {
			t.Errorf("Parse(%q) = %v; want an error naming the value", in, err)
		}
	}
	for i := range names {
		if c, err := Parse(Cap(i).String()); err != nil || c != Cap(i) {
			t.Errorf("%s does not parse back: %v %v", Cap(i), c, err)
		}
	}
	if s := Cap(63).String(); s != "CAP_63" {
		t.Errorf("Cap(63) = %s", s)
	}
}

func TestDrops(t *testing.T) {
	if got := Drops(nil); !slices.Equal(got, Gate) {
		t.Errorf("Drops(nil) = %v, want the gate set", got)
	}
	got := Drops([]Cap{NetRaw, SysPtrace, 0})
	if len(got) != len(Gate)-2 || slices.Contains(got, NetRaw) || slices.Contains(got, SysPtrace) || !slices.Contains(got, SysAdmin) {
		t.Errorf("Drops(net_raw, sys_ptrace) = %v", got)
	}
	if got := Names(Kept([]Cap{SysPtrace, 0, NetRaw, SysPtrace})); !slices.Equal(got, []string{"CAP_NET_RAW", "CAP_SYS_PTRACE"}) {
		t.Errorf("Names(Kept(...)) = %q: want the gate members, once, in the gate's order", got)
	}
	if Names(Kept(nil)) != nil {
		t.Errorf("nothing kept is not nil")
	}
	for _, c := range Gate {
		if !InGate(c) {
			t.Errorf("InGate(%s) = false", c)
		}
	}
	if InGate(0) || InGate(unix.CAP_SETUID) || InGate(unix.CAP_DAC_OVERRIDE) {
		t.Errorf("InGate is true outside the gate set")
	}
}

// status reads the credentials lines of a child's /proc/self/status.
type status map[string]string

func (s status) mask(t *testing.T, key string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s[key], 16, 64)
	if err != nil {
		t.Fatalf("%s: %q: %v", key, s[key], err)
	}
	return v
}

func parseStatus(out []byte) status {
	st := status{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st
}

func catStatus(t *testing.T) *exec.Cmd {
	t.Helper()
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("no cat(1)")
	}
	return exec.Command(cat, "/proc/self/status")
}

func run(t *testing.T, start func(*exec.Cmd) error, cmd *exec.Cmd) status {
	t.Helper()
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := start(cmd); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	return parseStatus(out.Bytes())
}

// onThread runs f on a fresh OS thread that is thrown away afterwards, so
// a test may change that thread's credentials.
func onThread(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		f()
	}()
	<-done
}

// checkParentClean checks, on a thread of this process that no test
// changed, that it still has no_new_privs clear and the whole gate set
// in its bounding set.
func checkParentClean(t *testing.T) {
	t.Helper()
	nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	if err != nil || nnp != 0 {
		t.Errorf("this process now has no_new_privs %d (%v)", nnp, err)
	}
	for _, c := range Gate {
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && in != 1 {
			t.Errorf("this process lost %s from its bounding set", c)
		}
	}
}

func checkDropped(t *testing.T, st status, drop []Cap) {
	t.Helper()
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs: %q, want 1", st["NoNewPrivs"])
	}
	for _, set := range []string{"CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"} {
		m := st.mask(t, set)
		for _, c := range drop {
			if m&(1<<c) != 0 {
				t.Errorf("%s %016x still holds %s", set, m, c)
			}
		}
	}
}

// As root, the child has none of the dropped capabilities in any set and
// keeps the others (CAP_SETUID stands for them); the parent is untouched.
func TestStartDropsInTheChildOnly(t *testing.T) {
	privtest.RequireRoot(t)
	for _, keep := range [][]Cap{nil, {NetRaw}} {
		t.Run(fmt.Sprint(keep), func(t *testing.T) {
			drop := Drops(keep)
			st := run(t, func(c *exec.Cmd) error { return Start(c, drop) }, catStatus(t))
			checkDropped(t, st, drop)
			eff, bnd := st.mask(t, "CapEff"), st.mask(t, "CapBnd")
			if eff&(1<<unix.CAP_SETUID) == 0 || bnd&(1<<unix.CAP_SETUID) == 0 {
				t.Errorf("CAP_SETUID was dropped too: eff %x bnd %x", eff, bnd)
			}
			for _, c := range keep {
				if eff&(1<<c) == 0 || bnd&(1<<c) == 0 {
					t.Errorf("kept %s missing: eff %x bnd %x", c, eff, bnd)
				}
			}
			onThread(func() { checkParentClean(t) })
		})
	}
	// A plain start from this process still has them all.
	st := run(t, (*exec.Cmd).Start, catStatus(t))
	if st["NoNewPrivs"] != "0" || st.mask(t, "CapEff")&(1<<SysAdmin) == 0 {
		t.Errorf("a plain start lost privileges: %v", st)
	}
}

// Capabilities the caller left in the inheritable and ambient sets are
// taken from there too: a root exec would add the inheritable set to the
// command's permitted set, and any exec adds the ambient set.
func TestInheritableAndAmbientDropped(t *testing.T) {
	privtest.RequireRoot(t)
	raise := func(t *testing.T) {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			t.Fatal(err)
		}
		data[0].Inheritable |= 1<<NetRaw | 1<<NetAdmin
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			t.Fatal(err)
		}
		for _, c := range []Cap{NetRaw, NetAdmin} {
			if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, drop := range [][]Cap{nil, {NetRaw}} {
		var st status
		onThread(func() {
			raise(t)
			st = run(t, func(c *exec.Cmd) error { return startFromThread(c, drop) }, catStatus(t))
		})
		inh, amb := st.mask(t, "CapInh"), st.mask(t, "CapAmb")
		if inh&(1<<NetAdmin) == 0 || amb&(1<<NetAdmin) == 0 {
			t.Fatalf("drop %v: the raised CAP_NET_ADMIN did not reach the child (inh %x amb %x): the test proves nothing", drop, inh, amb)
		}
		if got := inh&(1<<NetRaw) != 0 || amb&(1<<NetRaw) != 0; got == (len(drop) > 0) {
			t.Errorf("drop %v: CAP_NET_RAW inheritable/ambient = %v (inh %x amb %x)", drop, got, inh, amb)
		}
	}
	onThread(func() { checkParentClean(t) })
}

// Without CAP_SETPCAP the bounding set cannot be lowered. A non-root
// caller then still starts the command, which gets no capability at all;
// a root one is refused, since root's exec would be granted the bounding
// set.
func TestWithoutSetpcap(t *testing.T) {
	privtest.RequireRoot(t)
	var st status
	onThread(func() {
		// Per thread, unlike syscall.Setresuid.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			t.Fatal(e)
		}
		st = run(t, func(c *exec.Cmd) error { return startFromThread(c, Gate) }, catStatus(t))
	})
	if !strings.HasPrefix(st["Uid"], "65534") {
		t.Fatalf("the child runs as %q: not the test's non-root thread", st["Uid"])
	}
	if st["NoNewPrivs"] != "1" || st.mask(t, "CapEff") != 0 || st.mask(t, "CapPrm") != 0 || st.mask(t, "CapAmb") != 0 {
		t.Errorf("non-root child: %v", st)
	}

	var err error
	onThread(func() {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			t.Fatal(err)
		}
		data[0].Effective &^= 1 << unix.CAP_SETPCAP
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			t.Fatal(err)
		}
		err = restrictThread(Gate)
	})
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") || !strings.Contains(err.Error(), "bounding set") {
		t.Errorf("root without CAP_SETPCAP: %v; want a refusal naming the capability", err)
	}
	onThread(func() { checkParentClean(t) })
}

func TestStartRefusesAmbientRaise(t *testing.T) {
	cmd := exec.Command("true")
	cmd.SysProcAttr = &unix.SysProcAttr{AmbientCaps: []uintptr{unix.CAP_NET_RAW}}
	if err := Start(cmd, Gate); err == nil {
		cmd.Wait()
		t.Fatal("Start raised the ambient capabilities it was to drop")
	}
}
