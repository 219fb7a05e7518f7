package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	v1 "github.com/agentfence/agentfence/api/v1"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/privdrop"
)

// capProbeEnv makes the test binary a capability probe: it runs the
// ';'-separated actions and prints "VERB RESULT" for each, then exits. It
// is checked in init, before TestMain, so it needs nothing from it.
const capProbeEnv = "AGENTFENCE_CAPPROBE"

func init() {
	if actions := os.Getenv(capProbeEnv); actions != "" {
		for _, a := range strings.Split(actions, ";") {
			verb, arg, _ := strings.Cut(a, " ")
			fmt.Printf("%s %s\n", verb, capProbe(verb, arg))
		}
		os.Exit(0)
	}
}

// capProbe performs one action and returns "ok", an errno name, or what it
// read. Actions:
//
//	status          this process's credentials, as nnp=,bnd=,eff=,prm=,inh=,amb=,euid=
//	packet          socket(AF_PACKET, SOCK_RAW, 0)
//	xdp             socket(AF_XDP, SOCK_RAW, 0)
//	rawinet         socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)
//	bpf             bpf(BPF_PROG_LOAD) of a cgroup connect4 program
//	bpfid           bpf(BPF_PROG_GET_FD_BY_ID), the way to the gate's programs
//	unshare         unshare(CLONE_NEWNET)
//	setns           setns into a network namespace (its own: the capability check is the same)
//	module          init_module of a 4-byte image (never a module: ENOEXEC if allowed)
//	perf            perf_event_open of a CPU-wide software counter (CAP_PERFMON's)
//	vmread PID      process_vm_readv from PID (an unmapped address: EFAULT if allowed)
//	nobody          setuid(65534) for the rest of the actions
//	cgmove ROOT     write this process's pid to ROOT/cgroup.procs
//	spawn PATH ACT  run PATH as a probe doing ACT; its result
func capProbe(verb, arg string) string {
	switch verb {
	case "status":
		return procStatus()
	case "packet":
		return trySocket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	case "xdp":
		return trySocket(unix.AF_XDP, unix.SOCK_RAW, 0)
	case "rawinet":
		return trySocket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	case "bpf":
		return bpfProgLoad()
	case "bpfid":
		attr := [3]uint32{1} // prog_id 1, next_id, open_flags
		fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_GET_FD_BY_ID, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		return fdResult(int(fd), e)
	case "unshare":
		return onThrowawayThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) })
	case "setns":
		return onThrowawayThread(func() error {
			fd, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Setns(fd, unix.CLONE_NEWNET)
		})
	case "module":
		return errResult(unix.InitModule([]byte("junk"), ""))
	case "perf":
		attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK}
		attr.Size = uint32(unsafe.Sizeof(attr))
		fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err == nil {
			unix.Close(fd)
		}
		return errResult(err)
	case "vmread":
		pid, _ := strconv.Atoi(arg)
		buf := make([]byte, 8)
		_, err := unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &buf[0], Len: 8}}, []unix.RemoteIovec{{Base: 8, Len: 8}}, 0)
		return errResult(err)
	case "nobody":
		return errResult(syscall.Setuid(65534)) // every thread
	case "cgmove":
		return errResult(os.WriteFile(filepath.Join(arg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0))
	case "spawn":
		path, act, _ := strings.Cut(arg, " ")
		cmd := exec.Command(path)
		cmd.Env = append(os.Environ(), capProbeEnv+"="+act)
		out, err := cmd.Output()
		if err != nil {
			return "spawn:" + errResult(err)
		}
		_, res, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		return res
	}
	return "badverb"
}

func procStatus() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return errResult(err)
	}
	keys := map[string]string{"NoNewPrivs": "nnp", "CapBnd": "bnd", "CapEff": "eff", "CapPrm": "prm", "CapInh": "inh", "CapAmb": "amb"}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if short, ok := keys[k]; ok {
			out = append(out, short+"="+strings.TrimSpace(v))
		}
	}
	return strings.Join(append(out, fmt.Sprintf("euid=%d", os.Geteuid())), ",")
}

func trySocket(family, typ, proto int) string {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
	if err == nil {
		unix.Close(fd)
	}
	return errResult(err)
}

// bpfProgLoad loads "r0 = 1; exit" as a cgroup connect4 program, the kind
// that could be attached beside the gate.
func bpfProgLoad() string {
	// Kernels before 5.11 charge BPF programs to RLIMIT_MEMLOCK and answer
	// EPERM past it: lift it (CAP_SYS_RESOURCE is not dropped), so that an
	// EPERM means the missing CAP_BPF and CAP_SYS_ADMIN.
	unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY})
	insns := [2]uint64{0x00000001_000000b7, 0x95} // mov64 r0, 1; exit
	license := []byte("GPL\x00")
	attr := struct {
		progType, insnCnt       uint32
		insns, license          uint64
		logLevel, logSize       uint32
		logBuf                  uint64
		kernVersion, progFlags  uint32
		progName                [16]byte
		progIfindex, attachType uint32
	}{progType: unix.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, insnCnt: 2,
		insns: uint64(uintptr(unsafe.Pointer(&insns[0]))), license: uint64(uintptr(unsafe.Pointer(&license[0]))),
		attachType: unix.BPF_CGROUP_INET4_CONNECT}
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(&insns)
	runtime.KeepAlive(license)
	return fdResult(int(fd), e)
}

func fdResult(fd int, e unix.Errno) string {
	if e != 0 {
		return errResult(e)
	}
	unix.Close(fd)
	return "ok"
}

// onThrowawayThread runs f on a thread that ends with it, so a namespace
// change that succeeds never reaches the other actions.
func onThrowawayThread(f func() error) string {
	res := make(chan error)
	go func() {
		runtime.LockOSThread()
		res <- f()
	}()
	return errResult(<-res)
}

func errResult(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	for e := err; e != nil; {
		if x, ok := e.(unix.Errno); ok {
			errno = x
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	if errno != 0 {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

// capResults parses the probe's "VERB RESULT" lines.
func capResults(t *testing.T, out string) map[string]string {
	t.Helper()
	res := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		verb, r, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("probe output %q", out)
		}
		res[verb] = r
	}
	return res
}

// creds reads a status result into its fields.
type creds map[string]string

func parseCreds(t *testing.T, s string) creds {
	t.Helper()
	c := creds{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("status result %q", s)
		}
		c[k] = v
	}
	return c
}

func (c creds) mask(t *testing.T, set string) uint64 {
	t.Helper()
	m, err := strconv.ParseUint(c[set], 16, 64)
	if err != nil {
		t.Fatalf("%s = %q: %v", set, c[set], err)
	}
	return m
}

// checkLaunched checks a member's credentials: no_new_privs, and none of
// drop in any capability set, while CAP_SETUID (not on the list) and the
// kept capabilities remain.
func checkLaunched(t *testing.T, what, status string, drop, keep []privdrop.Cap) {
	t.Helper()
	c := parseCreds(t, status)
	if c["nnp"] != "1" {
		t.Errorf("%s: NoNewPrivs %q, want 1", what, c["nnp"])
	}
	for _, set := range []string{"bnd", "eff", "prm", "inh", "amb"} {
		m := c.mask(t, set)
		for _, d := range drop {
			if m&(1<<d) != 0 {
				t.Errorf("%s: %s %016x holds %s", what, set, m, d)
			}
		}
	}
	for _, set := range []string{"bnd", "eff"} {
		m := c.mask(t, set)
		for _, k := range append([]privdrop.Cap{unix.CAP_SETUID}, keep...) {
			if m&(1<<k) == 0 {
				t.Errorf("%s: %s %016x lacks %s, which is not dropped", what, set, m, k)
			}
		}
	}
}

// setuidProbe copies the test binary to a setuid-root file every user may
// run.
func setuidProbe(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agentfence-setuid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "probe")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// directProbe runs the probe outside any session, as root with every
// capability: what each action does when nothing is dropped.
func directProbe(t *testing.T, actions string) map[string]string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), capProbeEnv+"="+actions)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("direct probe: %v", err)
	}
	return capResults(t, string(out))
}

// A command run in a session has no_new_privs and none of the gate set,
// and neither does what it starts: the routes those capabilities open
// fail with EPERM, and a setuid-root binary gives a non-root member
// nothing. The same probe run outside a session shows each route open.
func TestLaunchDropsGateCapabilities(t *testing.T) {
	d := startDaemon(t)
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	suid := setuidProbe(t)
	daemonPid := d.cmd.Process.Pid
	actions := strings.Join([]string{"status", "spawn /proc/self/exe status", "packet", "xdp", "rawinet", "bpf", "bpfid",
		"unshare", "setns", "module", "perf", fmt.Sprintf("vmread %d", daemonPid), "nobody", "cgmove " + root, "spawn " + suid + " status"}, ";")
	// spawn appears twice; the keys are by verb, so run the first as "child".
	childActions := strings.Replace(actions, "spawn /proc/self/exe status", "status", 1)

	// Outside a session: every route works as root (which is what makes
	// the EPERMs below mean something), and the setuid copy runs as root.
	direct := directProbe(t, childActions)
	for _, verb := range []string{"packet", "rawinet", "bpf", "unshare", "setns"} {
		if direct[verb] != "ok" {
			t.Fatalf("outside a session, %s: %s", verb, direct[verb])
		}
	}
	if direct["vmread"] != "EFAULT" {
		t.Fatalf("outside a session, vmread of the daemon: %s, want EFAULT (allowed; nothing mapped there)", direct["vmread"])
	}
	if c := parseCreds(t, direct["spawn"]); c["euid"] != "0" {
		t.Fatalf("outside a session the setuid-root copy runs as euid %s: the file system ignores setuid, the test proves nothing", c["euid"])
	}

	stdout, stderr, code := d.cli(t, []string{capProbeEnv + "=" + actions},
		"run", "--intent", "capabilities", "--allow", "udp://127.0.0.53:53", "--", os.Args[0])
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	// The first spawn's line is overwritten by the second in the map;
	// read it by position.
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 15 {
		t.Fatalf("probe output %q", stdout)
	}
	_, childStatus, _ := strings.Cut(lines[1], " ")
	res := capResults(t, stdout)

	drop := privdrop.Gate
	checkLaunched(t, "member", res["status"], drop, nil)
	checkLaunched(t, "member's child", childStatus, drop, nil)
	for _, verb := range []string{"rawinet", "bpf", "bpfid", "unshare", "setns", "vmread"} {
		if res[verb] != "EPERM" {
			t.Errorf("member %s: %s, want EPERM", verb, res[verb])
		}
	}
	// Packet and XDP sockets meet run's seccomp filter before the missing
	// CAP_NET_RAW: EAFNOSUPPORT, whether or not the kernel has the family.
	for _, verb := range []string{"packet", "xdp"} {
		if res[verb] != "EAFNOSUPPORT" {
			t.Errorf("member %s socket: %s, want EAFNOSUPPORT", verb, res[verb])
		}
	}
	if direct["module"] == "ENOSYS" {
		t.Logf("kernel without module support: module loading not checked")
	} else if res["module"] != "EPERM" {
		t.Errorf("member init_module: %s, want EPERM (as root outside a session: %s)", res["module"], direct["module"])
	}
	if direct["perf"] == "ok" && res["perf"] != "EACCES" && res["perf"] != "EPERM" {
		t.Errorf("member CPU-wide perf_event_open: %s, want refused", res["perf"])
	}
	// A non-root member cannot leave the session cgroup for the root.
	if res["nobody"] != "ok" || res["cgmove"] != "EACCES" {
		t.Errorf("non-root member moving to the root cgroup: setuid %s, move %s; want ok, EACCES", res["nobody"], res["cgmove"])
	}
	// no_new_privs: the setuid bit gives the non-root member nothing.
	if c := parseCreds(t, res["spawn"]); c["euid"] != "65534" || c["nnp"] != "1" || c.mask(t, "eff") != 0 || c.mask(t, "prm") != 0 {
		t.Errorf("setuid-root binary run by a non-root member: %v", c)
	}
	d.waitRecord(t, "closed", func(r audit.Record) bool { return r.Kind == audit.KindSession && r.Event == "closed" })
	for _, r := range d.records(t) {
		if r.Kind == audit.KindSession && r.Session != nil && r.Session.KeptCaps != nil {
			t.Errorf("%s record of a session that kept nothing says kept_caps %q", r.Event, r.Session.KeptCaps)
		}
	}
	d.expectClean(t)
}

// --keep-cap net_raw leaves CAP_NET_RAW to the command, and that is all:
// run's seccomp filter still refuses packet and XDP sockets, the gate
// still refuses raw inet sockets (bypass_test.go records both), the rest
// of the gate set is still dropped, and the session and its records say
// what was kept.
func TestLaunchKeepCapNetRaw(t *testing.T) {
	d := startDaemon(t)
	show := filepath.Join(t.TempDir(), "show.json")
	probe := []string{"status", "packet", "xdp", "rawinet", "bpf"}
	direct := directProbe(t, strings.Join(probe, ";"))
	env := []string{capProbeEnv + "=" + strings.Join(probe, ";"),
		"AF_BIN=" + filepath.Join(d.bin, "agentfence"), "AF_SOCK=" + d.socket, "AF_SHOW=" + show, "AF_PROBE=" + os.Args[0]}
	// The member shows its own session, then becomes the probe.
	stdout, stderr, code := d.cli(t, env, "run", "--intent", "capture", "--keep-cap", "net_raw", "--allow", "udp://127.0.0.53:53", "--",
		"sh", "-c", `"$AF_BIN" session show --socket "$AF_SOCK" "$AGENTFENCE_SESSION" > "$AF_SHOW" && exec "$AF_PROBE"`)
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	res := capResults(t, stdout)
	keep := []privdrop.Cap{privdrop.NetRaw}
	checkLaunched(t, "member", res["status"], privdrop.Drops(keep), keep)
	if res["packet"] != "EAFNOSUPPORT" || res["xdp"] != "EAFNOSUPPORT" {
		t.Errorf("with CAP_NET_RAW kept: packet socket %s, XDP socket %s; want EAFNOSUPPORT (as root outside a session: %s, %s)",
			res["packet"], res["xdp"], direct["packet"], direct["xdp"])
	}
	if res["rawinet"] != "EPERM" || res["bpf"] != "EPERM" {
		t.Errorf("with CAP_NET_RAW kept: raw inet socket %s (the gate refuses it), bpf %s; want EPERM", res["rawinet"], res["bpf"])
	}

	b, err := os.ReadFile(show)
	if err != nil {
		t.Fatal(err)
	}
	var s v1.Session
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("session show: %v: %s", err, b)
	}
	if !slices.Equal(s.KeptCaps, []string{"CAP_NET_RAW"}) || !bytes.Contains(b, []byte(`"kept_caps": [`)) {
		t.Errorf("session show: kept_caps %q in %s", s.KeptCaps, b)
	}
	closed := d.waitRecord(t, "closed", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "closed" && r.Session.ID == s.ID
	})
	opened := d.waitRecord(t, "opened", func(r audit.Record) bool {
		return r.Kind == audit.KindSession && r.Event == "opened" && r.Session.ID == s.ID
	})
	for _, r := range []audit.Record{opened, closed} {
		if !slices.Equal(r.Session.KeptCaps, []string{"CAP_NET_RAW"}) {
			t.Errorf("%s record: session.kept_caps %q", r.Event, r.Session.KeptCaps)
		}
	}
	d.expectClean(t)
}

// An unknown --keep-cap, or one run does not drop, is bad usage: exit 2,
// the value named, no session and no cgroup.
func TestLaunchRejectsUnknownKeepCap(t *testing.T) {
	d := startDaemon(t)
	for _, c := range []struct{ value, msg string }{
		{"bogus", `"bogus"`},
		{"CAP_NET_RAWX", `"CAP_NET_RAWX"`},
		{"chown", "does not drop CAP_CHOWN"},
	} {
		stdout, stderr, code := d.cli(t, nil, "run", "--intent", "x", "--keep-cap", "net_raw", "--keep-cap", c.value, "--", "echo", "ran")
		if code != 2 || !strings.Contains(stderr, c.msg) || strings.Contains(stdout, "ran") {
			t.Errorf("--keep-cap %q: exit %d, stdout %q, stderr %q; want 2 and %s", c.value, code, stdout, stderr, c.msg)
		}
	}
	d.expectClean(t)
	for _, r := range d.records(t) {
		if r.Kind == audit.KindSession {
			t.Errorf("a refused run left a %s record", r.Event)
		}
	}
}
