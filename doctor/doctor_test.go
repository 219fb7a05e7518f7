package doctor

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/internal/privtest"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// kernelConfig returns the value of CONFIG_name from /proc/config.gz: "y",
// "m", "n" (for "is not set"), or "" when the file or the line is absent.
func kernelConfig(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return ""
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return ""
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line == "# CONFIG_"+name+" is not set" {
			return "n"
		}
		if v, ok := strings.CutPrefix(line, "CONFIG_"+name+"="); ok {
			return v
		}
	}
	return ""
}

func mustGet(t *testing.T, r Report, name string) Check {
	t.Helper()
	c, ok := r.Get(name)
	if !ok {
		t.Fatalf("report has no %q check", name)
	}
	return c
}

// TestRunOnHost runs every probe against the machine's kernel. The
// development and CI machines are one kind (same kernel), so what is
// asserted here is what that kernel provides; each assertion is
// cross-checked against an independent source where there is one.
func TestRunOnHost(t *testing.T) {
	privtest.RequireRoot(t)
	var out bytes.Buffer
	r, err := Run(context.Background(), &out, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())

	// Every check ran and has a status from the defined set.
	for _, c := range r.Checks {
		switch c.Status {
		case StatusOK, StatusDegraded, StatusMissing, StatusUnknown:
		default:
			t.Errorf("%s: status %q", c.Name, c.Status)
		}
		if c.Status != StatusOK && c.Impact == "" {
			t.Errorf("%s is %s but says nothing about what that disables", c.Name, c.Status)
		}
		if !strings.Contains(out.String(), c.Name) {
			t.Errorf("table does not list %s", c.Name)
		}
	}
	if !r.Root {
		t.Error("Report.Root is false under root")
	}

	// kernel: matches uname.
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if rel := unix.ByteSliceToString(u.Release[:]); r.Kernel != rel {
		t.Errorf("Kernel = %q, uname says %q", r.Kernel, rel)
	}

	// BTF: the file is there, so the check must be ok.
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Fatalf("this machine kind has kernel BTF: %v", err)
	}
	if c := mustGet(t, r, CheckBTF); c.Status != StatusOK {
		t.Errorf("btf = %+v, want ok", c)
	}

	// cgroup2: the check must name the mount we can find ourselves.
	var cg2 string
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			cg2 = p
			break
		}
	}
	if cg2 == "" {
		t.Fatal("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	if c := mustGet(t, r, CheckCgroup2); c.Status != StatusOK || !strings.HasPrefix(c.Detail, cg2+" ") {
		t.Errorf("cgroup2 = %+v, want ok at %s", c, cg2)
	}

	// The gate's needs are all met on this kernel.
	for _, name := range []string{CheckCgroupSockAddr, CheckCgroupSock, CheckRingBuf, CheckLPMTrie, CheckHash,
		CheckPerCPUArray, CheckArray, CheckAncestorCgroup, CheckKtimeBoot, CheckRingbufReserve} {
		if c := mustGet(t, r, name); c.Status != StatusOK || !c.Gate {
			t.Errorf("%s = %+v, want ok and part of the gate", name, c)
		}
	}
	if c := mustGet(t, r, CheckCgroupSockAddr); !strings.Contains(c.Detail, "attaches") {
		t.Errorf("cgroup_sock_addr did not try the attach probe: %q", c.Detail)
	}
	if !r.GateCanRun() {
		t.Errorf("GateCanRun = false; blocking: %+v", r.Blocking())
	}
	if !strings.Contains(out.String(), "the gate can run") {
		t.Error("table does not state the result")
	}

	// bpffs: mounted (ok) or mountable (degraded); never missing here.
	if c := mustGet(t, r, CheckBPFFS); c.Status != StatusOK && c.Status != StatusDegraded {
		t.Errorf("bpffs = %+v", c)
	}

	// kprobes: this kind's kernel is built without CONFIG_KPROBES. The
	// program type still loads, so a check that only loaded a program
	// would wrongly say ok.
	kp := mustGet(t, r, CheckKprobe)
	switch kernelConfig(t, "KPROBES") {
	case "n":
		if kp.Status != StatusMissing {
			t.Errorf("kprobe = %+v, want missing (CONFIG_KPROBES is not set)", kp)
		}
	case "y":
		if kp.Status != StatusOK {
			t.Errorf("kprobe = %+v, want ok (CONFIG_KPROBES=y)", kp)
		}
	}
	if kp.Gate {
		t.Error("kprobes must not be required by the gate")
	}

	// LSM: ok only where the kernel runs the bpf LSM (Debian's kernels in
	// the VM matrix boot with it); this machine kind runs it but refuses
	// its programs, which the detail must say. Either way the socket
	// family layer must agree with it.
	lsm, _ := os.ReadFile("/sys/kernel/security/lsm")
	active := slices.Contains(strings.Split(strings.TrimSpace(string(lsm)), ","), "bpf")
	c := mustGet(t, r, CheckLSM)
	switch {
	case c.Gate:
		t.Errorf("lsm = %+v: must not be part of the gate", c)
	case !active && c.Status != StatusMissing:
		t.Errorf("lsm = %+v, want missing (active LSMs %q)", c, lsm)
	case active && c.Status != StatusOK && !strings.Contains(c.Detail, "runs the bpf LSM but refuses"):
		t.Errorf("lsm = %+v, want ok or a refusal named as such (active LSMs %q)", c, lsm)
	}
	fam := mustGet(t, r, CheckObjectFamilies)
	if onLSM := strings.Contains(fam.Detail, "layer bpf_lsm"); onLSM != (c.Status == StatusOK) {
		t.Errorf("%s = %q disagrees with %s = %s", CheckObjectFamilies, fam.Detail, CheckLSM, c.Status)
	}

	// SOCK_DESTROY follows CONFIG_INET_DIAG_DESTROY.
	sd := mustGet(t, r, CheckSockDestroy)
	switch kernelConfig(t, "INET_DIAG_DESTROY") {
	case "y":
		if sd.Status != StatusOK {
			t.Errorf("sock_diag/destroy = %+v, want ok (CONFIG_INET_DIAG_DESTROY=y)", sd)
		}
	case "n":
		if sd.Status != StatusMissing {
			t.Errorf("sock_diag/destroy = %+v, want missing", sd)
		}
	}

	// Task iterators of one process came with 6.1 (BTF is checked above):
	// before, the iterator cannot exist; from 6.1 on, it must load.
	wantIter := StatusOK
	if privtest.KernelBefore(6, 1) {
		wantIter = StatusMissing
	}
	if c := mustGet(t, r, CheckSockIter); c.Status != wantIter {
		t.Errorf("%s = %+v, want %s", CheckSockIter, c, wantIter)
	}

	// The daemon's own objects load on every supported kernel; only the
	// gate is required, and each says how long its load took.
	for _, name := range []string{CheckObjectGate, CheckObjectHostnames, CheckObjectTaskLister, CheckObjectProcess} {
		c := mustGet(t, r, name)
		if c.Status != StatusOK || c.Duration <= 0 || !strings.Contains(c.Detail, "verified in") {
			t.Errorf("%s = %+v, want ok with its verification time", name, c)
		}
		if c.Gate != (name == CheckObjectGate) {
			t.Errorf("%s: Gate = %v", name, c.Gate)
		}
	}
	// The socket iterator: before 6.1 the pidfd_getfd path; from 6.1 on
	// the iterator, degraded where it walks the leader's fd table only.
	si := mustGet(t, r, CheckObjectSockIter)
	switch {
	case privtest.KernelBefore(6, 1):
		if si.Status != StatusMissing || !strings.Contains(si.Detail, "pidfd_getfd") {
			t.Errorf("%s = %+v, want missing and the pidfd_getfd path", CheckObjectSockIter, si)
		}
	case si.Status != StatusOK && si.Status != StatusDegraded,
		!strings.Contains(si.Detail, "sockets named by: bpf task_file iterator"), si.Duration <= 0, si.Gate:
		t.Errorf("%s = %+v, want the iterator path", CheckObjectSockIter, si)
	}

	// The attach probe cleaned up after itself.
	leftovers, _ := filepath.Glob(filepath.Join(cg2, "agentfence-doctor-*"))
	if len(leftovers) != 0 {
		t.Errorf("test cgroups left behind: %v", leftovers)
	}
}

// TestObjectRefused breaks one object at a time (a program that reads an
// unwritten register, loaded through the real path): doctor reports it
// missing with the verifier's reason, and only the gate decides the verdict.
func TestObjectRefused(t *testing.T) {
	privtest.RequireRoot(t)
	for _, tc := range []struct {
		object, check, impact string
	}{
		{enforcer.ObjectGate, CheckObjectGate, "the daemon cannot start"},
		{enforcer.ObjectHostnames, CheckObjectHostnames, "hostname rules are unavailable"},
		{enforcer.ObjectTaskLister, CheckObjectTaskLister, "pid table walk"},
		{sensor.ObjectProcess, CheckObjectProcess, "only the pid, uid and comm"},
		{tlsprobe.Object, CheckObjectTLS, "no http records"},
	} {
		var out bytes.Buffer
		r, err := Run(context.Background(), &out, Options{NoAttach: true, NoSockDestroy: true,
			Objects: enforcer.VerifyOptions{Break: tc.object}})
		if err != nil {
			t.Fatal(err)
		}
		c := mustGet(t, r, tc.check)
		if c.Status != StatusMissing || !strings.Contains(c.Detail, "verifier refused it") ||
			!strings.Contains(c.Detail, "R9 !read_ok") || !strings.Contains(c.Impact, tc.impact) {
			t.Errorf("break %s: %+v", tc.object, c)
		}
		for _, other := range []string{CheckObjectGate, CheckObjectHostnames, CheckObjectTaskLister, CheckObjectProcess, CheckObjectTLS} {
			if o := mustGet(t, r, other); other != tc.check && o.Status != StatusOK {
				t.Errorf("break %s: %s = %+v", tc.object, other, o)
			}
		}
		gate := tc.object == enforcer.ObjectGate
		if r.GateCanRun() == gate {
			t.Errorf("break %s: GateCanRun = %v", tc.object, r.GateCanRun())
		}
		if gate && !strings.Contains(out.String(), "CANNOT run on this host (object/gate)") {
			t.Errorf("break gate: the table does not blame the gate object:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "-> "+c.Impact) {
			t.Errorf("break %s: the table does not print the fallback", tc.object)
		}
	}
}

// An object refused for another reason than the verifier's is classified
// like a probe.
func TestObjectCheckErrors(t *testing.T) {
	c := objectCheck(enforcer.ObjectCheck{Name: "hostnames", Fallback: "x", Err: fmt.Errorf("load: %w", ebpf.ErrNotSupported)})
	if c.Status != StatusMissing || c.Gate || c.Impact != "hostnames refused: x" {
		t.Errorf("not supported: %+v", c)
	}
	c = objectCheck(enforcer.ObjectCheck{Name: "gate", Required: true, Programs: 1, Duration: 1500 * time.Microsecond})
	if c.Status != StatusOK || !c.Gate || c.Detail != "its program loads; verified in 1.5 ms" {
		t.Errorf("ok: %+v", c)
	}
	if got := ms(62 * time.Second); got != "1m2s" {
		t.Errorf("ms(62s) = %q", got)
	}
}

func TestRunCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, io.Discard, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Run on a canceled context = %v", err)
	}
}

func TestSockDestroyProbe(t *testing.T) {
	privtest.RequireRoot(t)
	err := sockdestroy.ProbeDestroy()
	switch kernelConfig(t, "INET_DIAG_DESTROY") {
	case "y":
		if err != nil {
			t.Errorf("ProbeDestroy = %v, want nil", err)
		}
	case "n":
		if !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("ProbeDestroy = %v, want EOPNOTSUPP", err)
		}
	}
}

// The checks that read files are tested against fake hosts; they need no
// privileges.

func TestCheckBTFMissing(t *testing.T) {
	st := &run{report: &Report{}, opts: &Options{BTF: filepath.Join(t.TempDir(), "vmlinux")}}
	c := checkBTF(st)[0]
	if c.Status != StatusMissing || c.Gate || !strings.Contains(c.Impact, "gate still runs") {
		t.Errorf("btf with no file = %+v", c)
	}
	bad := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(bad, []byte("not btf"), 0o644); err != nil {
		t.Fatal(err)
	}
	st.opts.BTF = bad
	if c := checkBTF(st)[0]; c.Status != StatusMissing {
		t.Errorf("btf with a garbage file = %+v", c)
	}
}

func TestCheckCgroup2Fake(t *testing.T) {
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")

	// v1 only: missing, and the gate cannot run.
	if err := os.WriteFile(mi, []byte("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := &run{report: &Report{}, opts: &Options{MountInfo: mi}}
	c := checkCgroup2(st)[0]
	if c.Status != StatusMissing || !c.Gate || st.cgroup2 != "" {
		t.Errorf("cgroup2 on a v1-only host = %+v", c)
	}
	r := Report{Checks: []Check{c}}
	if r.GateCanRun() {
		t.Error("GateCanRun with cgroup2 missing")
	}

	// A cgroup_root that is not cgroup2.
	st = &run{report: &Report{}, opts: &Options{CgroupRoot: dir}}
	if c := checkCgroup2(st)[0]; c.Status != StatusMissing || !strings.Contains(c.Detail, "not a cgroup2") {
		t.Errorf("cgroup2 at a tmp dir = %+v", c)
	}

	// Unreadable mountinfo: unknown.
	st = &run{report: &Report{}, opts: &Options{MountInfo: filepath.Join(dir, "nope")}}
	if c := checkCgroup2(st)[0]; c.Status != StatusUnknown {
		t.Errorf("cgroup2 without mountinfo = %+v", c)
	}
}

func TestCheckBPFFSNotMounted(t *testing.T) {
	st := &run{report: &Report{}, opts: &Options{BPFFS: t.TempDir()}}
	c := checkBPFFS(st)[0]
	// Every kernel this runs on has bpffs support, so an unmounted
	// directory is degraded (agentfenced mounts it), not missing.
	if c.Status != StatusDegraded || c.Gate {
		t.Errorf("bpffs on a plain dir = %+v", c)
	}
}

func TestReportGateAndTable(t *testing.T) {
	r := Report{Kernel: "6.1.0", Root: true, Checks: []Check{
		{Name: CheckCgroup2, Status: StatusOK, Gate: true, Detail: "/sys/fs/cgroup"},
		{Name: CheckLSM, Status: StatusMissing, Impact: "no LSM: nothing disabled"},
		{Name: CheckBPFFS, Status: StatusDegraded, Impact: "mounted at start"},
	}}
	if !r.GateCanRun() {
		t.Error("GateCanRun false with only non-gate checks failing")
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"CHECK", "STATUS", CheckLSM, "missing", "-> no LSM: nothing disabled", "the gate can run"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "-> "+"/sys") {
		t.Error("ok checks must not print an impact line")
	}

	for _, bad := range []Status{StatusMissing, StatusUnknown} {
		r.Checks = append(r.Checks[:3:3], Check{Name: CheckCgroupSockAddr, Status: bad, Gate: true, Impact: "no CGroupSockAddr: the gate cannot run"})
		if r.GateCanRun() {
			t.Errorf("GateCanRun true with a gate check %s", bad)
		}
		if bl := r.Blocking(); len(bl) != 1 || bl[0].Name != CheckCgroupSockAddr {
			t.Errorf("Blocking = %+v", bl)
		}
		b.Reset()
		_ = r.WriteTable(&b)
		if !strings.Contains(b.String(), "CANNOT run on this host (prog/cgroup_sock_addr)") {
			t.Errorf("table does not say why the gate cannot run:\n%s", b.String())
		}
	}
	if (Report{}).GateCanRun() {
		t.Error("an empty report must not say the gate can run")
	}
	r.Root = false
	b.Reset()
	_ = r.WriteTable(&b)
	if !strings.Contains(b.String(), "not run as root") {
		t.Error("table does not warn when not root")
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string][2]int{"6.18.44-fc-v782": {6, 18}, "5.4.0-150-generic": {5, 4}, "4.19.0": {4, 19}} {
		maj, min, ok := parseRelease(in)
		if !ok || maj != want[0] || min != want[1] {
			t.Errorf("parseRelease(%q) = %d, %d, %v", in, maj, min, ok)
		}
	}
	if _, _, ok := parseRelease("weird"); ok {
		t.Error("parseRelease accepted garbage")
	}
}
