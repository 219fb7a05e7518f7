// Package doctor checks whether a host can run agentfence: kernel, BTF,
// cgroup v2, bpffs, the BPF program and map types and helpers the gate and
// the sensors use, and socket destruction. Every check probes the running
// kernel directly (loading tiny programs, creating tiny maps, opening a
// loopback connection) rather than reading kernel config. The probes say
// why something is missing; the verdict comes from loading the daemon's own
// BPF objects, unattached (objects.go), since a kernel can offer every
// feature and still have its verifier refuse a program.
//
// `agentfence doctor` prints the table and exits non-zero when
// Report.GateCanRun is false.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// Status is the outcome of one check.
type Status string

const (
	// StatusOK: present and working.
	StatusOK Status = "ok"
	// StatusDegraded: usable, with a limitation the detail explains.
	StatusDegraded Status = "degraded"
	// StatusMissing: absent or refused by the kernel.
	StatusMissing Status = "missing"
	// StatusUnknown: the probe could not tell (usually: not run as root).
	StatusUnknown Status = "unknown"
)

// Check names. Program, map and helper checks are named after the kernel
// objects they probe.
const (
	CheckKernel         = "kernel"
	CheckBTF            = "btf"
	CheckCgroup2        = "cgroup2"
	CheckBPFFS          = "bpffs"
	CheckCgroupSockAddr = "prog/cgroup_sock_addr"
	CheckCgroupSock     = "prog/cgroup_sock"
	CheckCgroupSKB      = "prog/cgroup_skb"
	CheckTracePoint     = "prog/tracepoint"
	CheckRawTracepoint  = "prog/raw_tracepoint"
	CheckTPBTF          = "prog/tp_btf"
	CheckLSM            = "prog/lsm"
	CheckKprobe         = "prog/kprobe"
	CheckUprobe         = "uprobe"
	CheckRingBuf        = "map/ringbuf"
	CheckLPMTrie        = "map/lpm_trie"
	CheckHash           = "map/hash"
	CheckLRUHash        = "map/lru_hash"
	CheckPerCPUArray    = "map/percpu_array"
	CheckArray          = "map/array"
	CheckAncestorCgroup = "helper/get_current_ancestor_cgroup_id"
	CheckCurrentCgroup  = "helper/get_current_cgroup_id"
	CheckKtimeBoot      = "helper/ktime_get_boot_ns"
	CheckRingbufReserve = "helper/ringbuf_reserve"
	CheckRingbufQuery   = "helper/ringbuf_query"
	CheckPidfdGetfd     = "pidfd_getfd"
	CheckSockIter       = "iter/task_file_sockets"
	CheckSockDestroy    = "sock_diag/destroy"
)

// Check is one line of the report.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Detail says what was found (a path, a version, the kernel's error).
	Detail string `json:"detail,omitempty"`
	// Impact says what agentfence loses when the check is not ok.
	Impact string `json:"impact,omitempty"`
	// Gate marks checks the connect gate cannot run without.
	Gate bool `json:"gate"`
	// Duration is how long an object check's load took, nearly all of it
	// verification (objects.go); 0 for the other checks.
	Duration time.Duration `json:"duration_ns,omitempty"`
}

// Report is the result of Run.
type Report struct {
	Kernel string  `json:"kernel"`
	Root   bool    `json:"root"`
	Checks []Check `json:"checks"`
}

// GateCanRun reports whether every check the gate needs is ok or degraded.
// An unknown gate check counts as a failure: the gate is not known to work.
func (r Report) GateCanRun() bool {
	for _, c := range r.Checks {
		if c.Gate && c.Status != StatusOK && c.Status != StatusDegraded {
			return false
		}
	}
	return len(r.Checks) > 0
}

// Blocking returns the gate checks that are neither ok nor degraded.
func (r Report) Blocking() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Gate && c.Status != StatusOK && c.Status != StatusDegraded {
			out = append(out, c)
		}
	}
	return out
}

// Get returns the check named name.
func (r Report) Get(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// WriteTable prints the report as an aligned table; each check that is not
// ok is followed by what it disables.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "CHECK\tSTATUS\tGATE\tDETAIL\n")
	for _, c := range r.Checks {
		gate := ""
		if c.Gate {
			gate = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Status, gate, oneLine(c.Detail))
		if c.Status != StatusOK && c.Impact != "" {
			fmt.Fprintf(tw, "\t\t\t-> %s\n", c.Impact)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var err error
	if r.GateCanRun() {
		_, err = fmt.Fprintln(w, "\nresult: the gate can run on this host")
	} else {
		var names []string
		for _, c := range r.Blocking() {
			names = append(names, c.Name)
		}
		_, err = fmt.Fprintf(w, "\nresult: the gate CANNOT run on this host (%s)\n", strings.Join(names, ", "))
	}
	if err == nil && !r.Root {
		_, err = fmt.Fprintln(w, "note: not run as root; probes that need CAP_BPF/CAP_NET_ADMIN report unknown")
	}
	return err
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Options locate the host's files; zero values are the real host paths.
type Options struct {
	// MountInfo is the mountinfo file to read (default /proc/self/mountinfo).
	MountInfo string
	// BTF is the kernel BTF file (default /sys/kernel/btf/vmlinux).
	BTF string
	// BPFFS is where bpffs is expected (default /sys/fs/bpf).
	BPFFS string
	// CgroupRoot is the cgroup v2 mount to use; "" finds it in MountInfo.
	CgroupRoot string
	// NoAttach skips attaching a test program to a throw-away child cgroup.
	NoAttach bool
	// NoSockDestroy skips the loopback SOCK_DESTROY probe.
	NoSockDestroy bool
	// Objects are the settings the daemon loads its objects with (DNS TTL
	// clamps, ...): they are constants the verifier sees. Break is for
	// tests of a refused object.
	Objects enforcer.VerifyOptions
}

func (o *Options) defaults() {
	if o.MountInfo == "" {
		o.MountInfo = "/proc/self/mountinfo"
	}
	if o.BTF == "" {
		o.BTF = "/sys/kernel/btf/vmlinux"
	}
	if o.BPFFS == "" {
		o.BPFFS = "/sys/fs/bpf"
	}
}

// Run performs every check, prints the table to w (when w is not nil) and
// returns the report. The error is non-nil only when ctx ends or writing to
// w fails; missing features are in the report, not in the error.
func Run(ctx context.Context, w io.Writer, opts Options) (Report, error) {
	opts.defaults()
	r := Report{Root: os.Geteuid() == 0}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; without
	// this, probes would fail with EPERM for a reason that is not the
	// feature. It is a no-op on newer kernels.
	_ = rlimit.RemoveMemlock()

	st := &run{report: &r, opts: &opts}
	steps := []func(*run) []Check{
		checkKernel,
		checkBTF,
		checkCgroup2,
		checkBPFFS,
		checkProgramTypes,
		checkMaps,
		checkHelpers,
		checkSockDestroy,
		checkObjects,
	}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		r.Checks = append(r.Checks, step(st)...)
	}
	if w != nil {
		if err := r.WriteTable(w); err != nil {
			return r, err
		}
	}
	return r, nil
}

// run is the state shared by the checks of one Run.
type run struct {
	report *Report
	opts   *Options
	// cgroup2 is the cgroup v2 mount found by checkCgroup2 ("" if none),
	// used by the attach probe.
	cgroup2 string
}

// classify turns a probe error into a status and detail.
func classify(err error) (Status, string) {
	switch {
	case err == nil:
		return StatusOK, ""
	case errors.Is(err, ebpf.ErrNotSupported):
		return StatusMissing, "not supported by this kernel"
	case (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)) && os.Geteuid() != 0:
		return StatusUnknown, "permission denied (run as root): " + err.Error()
	default:
		return StatusMissing, err.Error()
	}
}

func checkKernel(st *run) []Check {
	r := st.report
	var u unix.Utsname
	c := Check{Name: CheckKernel, Impact: "agentfence needs Linux 5.8 or newer (ring buffers, bpf_ktime_get_boot_ns)"}
	if err := unix.Uname(&u); err != nil {
		c.Status, c.Detail = StatusUnknown, "uname: "+err.Error()
		return []Check{c}
	}
	release := unix.ByteSliceToString(u.Release[:])
	r.Kernel = release
	c.Detail = release + " " + unix.ByteSliceToString(u.Machine[:])
	c.Status = StatusOK
	if maj, min, ok := parseRelease(release); ok && (maj < 5 || maj == 5 && min < 8) {
		c.Status = StatusDegraded
		c.Detail += " (older than 5.8; see the checks below for what works)"
	}
	return []Check{c}
}

func parseRelease(s string) (major, minor int, ok bool) {
	n, _ := fmt.Sscanf(s, "%d.%d", &major, &minor)
	return major, minor, n == 2
}

func checkBTF(st *run) []Check {
	o := st.opts
	c := Check{Name: CheckBTF,
		Impact: "no kernel BTF: the process sensor (CO-RE raw tracepoints) cannot load, so exec/fork/exit attribution is unavailable; the gate still runs"}
	f, err := os.Open(o.BTF)
	if err != nil {
		c.Status, c.Detail = StatusMissing, err.Error()
		return []Check{c}
	}
	defer f.Close()
	spec, err := btf.LoadSpecFromReader(f)
	if err != nil {
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s: %v", o.BTF, err)
		return []Check{c}
	}
	var ts *btf.Struct
	if err := spec.TypeByName("task_struct", &ts); err != nil {
		c.Status, c.Detail = StatusDegraded, fmt.Sprintf("%s has no task_struct: %v", o.BTF, err)
		return []Check{c}
	}
	c.Status, c.Detail = StatusOK, o.BTF
	return []Check{c}
}

func checkCgroup2(st *run) []Check {
	o := st.opts
	c := Check{Name: CheckCgroup2, Gate: true,
		Impact: "no cgroup v2: the gate cannot attach (cgroup/connect and sendmsg hooks need a cgroup v2 hierarchy)"}
	path := o.CgroupRoot
	if path == "" {
		mounts, err := procfs.ReadMountInfo(o.MountInfo)
		if err != nil {
			c.Status, c.Detail = StatusUnknown, err.Error()
			return []Check{c}
		}
		m, ok := procfs.FindCgroup2(mounts)
		if !ok {
			c.Status, c.Detail = StatusMissing, "no cgroup2 mount in "+o.MountInfo
			return []Check{c}
		}
		path = m.MountPoint
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s: %v", path, err)
		return []Check{c}
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		c.Status, c.Detail = StatusMissing, fmt.Sprintf("%s is not a cgroup2 filesystem (magic %#x)", path, sfs.Type)
		return []Check{c}
	}
	st.cgroup2 = path
	// Only the root cgroup lacks cgroup.type. A mount that shows a child
	// (a container's own cgroup namespace) would let the gate see only
	// that subtree.
	if _, err := os.Stat(filepath.Join(path, "cgroup.type")); err == nil {
		c.Status = StatusDegraded
		c.Detail = path + " shows a child cgroup, not the root of the hierarchy"
		c.Impact = "hooks attached here cover only that subtree; mount the host's cgroup2 root (hostPath /sys/fs/cgroup)"
		return []Check{c}
	}
	c.Status, c.Detail = StatusOK, path+" (root of the hierarchy)"
	return []Check{c}
}

func checkBPFFS(st *run) []Check {
	o := st.opts
	c := Check{Name: CheckBPFFS,
		Impact: "no bpffs: programs, links and maps cannot be pinned, so a daemon restart drops enforcement until the new daemon attaches"}
	var sfs unix.Statfs_t
	if err := unix.Statfs(o.BPFFS, &sfs); err == nil && sfs.Type == unix.BPF_FS_MAGIC {
		c.Status, c.Detail = StatusOK, o.BPFFS+" is mounted"
		return []Check{c}
	}
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		c.Status, c.Detail = StatusUnknown, err.Error()
		return []Check{c}
	}
	for _, line := range strings.Split(string(fs), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "bpf" {
			c.Status = StatusDegraded
			c.Detail = o.BPFFS + " is not a bpffs mount; the kernel supports bpffs and agentfenced mounts it at start"
			c.Impact = "none once agentfenced has mounted it; in Kubernetes mount /sys/fs/bpf with mountPropagation Bidirectional so pins outlive the pod"
			return []Check{c}
		}
	}
	c.Status, c.Detail = StatusMissing, "bpf filesystem not in /proc/filesystems"
	return []Check{c}
}

var returnZero = asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()}
var returnOne = asm.Instructions{asm.LoadImm(asm.R0, 1, asm.DWord), asm.Return()}

// loadProbe loads a minimal program and closes it.
func loadProbe(spec *ebpf.ProgramSpec) error {
	if spec.Instructions == nil {
		spec.Instructions = returnZero
	}
	if spec.License == "" {
		spec.License = "GPL"
	}
	p, err := ebpf.NewProgramWithOptions(spec, ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return err
	}
	return p.Close()
}

func checkProgramTypes(st *run) []Check {
	return []Check{
		checkSockAddr(st),
		progCheck(CheckCgroupSock, true, ebpf.CGroupSock,
			&ebpf.ProgramSpec{Type: ebpf.CGroupSock, AttachType: ebpf.AttachCGroupInetSockCreate, Instructions: returnOne},
			"cgroup/sock_create", "no CGroupSock: the gate cannot run (its cgroup/sock_create program cannot load)"),
		progCheck(CheckCgroupSKB, true, ebpf.CGroupSKB, nil,
			"cgroup_skb", "no CGroupSKB: the gate cannot run (its cgroup_skb/ingress program judges inbound traffic; the hostname programs need it too)"),
		checkTracepoint(),
		progCheck(CheckRawTracepoint, false, ebpf.RawTracepoint,
			&ebpf.ProgramSpec{Type: ebpf.RawTracepoint},
			"raw_tp", "no raw tracepoints: the process sensor (raw_tp/sched_process_exec, fork, exit) cannot load; attribution by process ancestry is unavailable"),
		progCheck(CheckTPBTF, false, ebpf.Tracing,
			&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "sched_process_exec"},
			"tp_btf/sched_process_exec", "no tp_btf: process events fall back to raw and classic tracepoints; nothing disabled"),
		checkLSM(),
		checkKprobe(),
		checkUprobe(),
	}
}

// progCheck probes a program type. With spec nil it uses the
// cilium/ebpf feature probe for pt; otherwise it loads spec.
func progCheck(name string, gate bool, pt ebpf.ProgramType, spec *ebpf.ProgramSpec, what, impact string) Check {
	c := Check{Name: name, Gate: gate, Impact: impact}
	var err error
	if spec == nil {
		err = features.HaveProgramType(pt)
	} else {
		err = loadProbe(spec)
	}
	c.Status, c.Detail = classify(err)
	if c.Status == StatusOK {
		c.Detail = what + " program loads"
	}
	return c
}

// checkLSM probes BPF LSM programs and says whether their hooks would
// run: a kernel can load them yet not run the bpf LSM (not in lsm=), or run
// it yet refuse programs (this machine kind: EPERM at load).
func checkLSM() Check {
	c := Check{Name: CheckLSM, Impact: "no BPF LSM: the boundary's checks run as fmod_ret programs where the kernel takes them, else sockets of families no cgroup hook sees are watched at the socket syscall's exit (see " + CheckObjectFamilies + ")"}
	active := enforcer.BPFLSMActive()
	err := features.HaveProgramType(ebpf.LSM)
	c.Status, c.Detail = classify(err)
	switch {
	case err == nil && active:
		c.Detail = "BPF LSM program loads and the kernel runs the bpf LSM"
	case err == nil:
		c.Status = StatusMissing
		c.Detail = "BPF LSM programs load but bpf is not in the active LSM list (boot with lsm=...,bpf), so their hooks never run"
	case active:
		c.Detail = "the kernel runs the bpf LSM but refuses its programs: " + c.Detail
	}
	return c
}

func checkSockAddr(st *run) Check {
	c := Check{Name: CheckCgroupSockAddr, Gate: true, Impact: "no CGroupSockAddr: the gate cannot run"}
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		c.Status, c.Detail = classify(err)
		return c
	}
	hooks := []struct {
		name string
		at   ebpf.AttachType
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect},
		{"connect6", ebpf.AttachCGroupInet6Connect},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
		{"bind4", ebpf.AttachCGroupInet4Bind},
		{"bind6", ebpf.AttachCGroupInet6Bind},
	}
	var loaded []string
	for _, h := range hooks {
		err := loadProbe(&ebpf.ProgramSpec{Type: ebpf.CGroupSockAddr, AttachType: h.at, Instructions: returnOne})
		if err != nil {
			c.Status, c.Detail = classify(err)
			c.Detail = "cgroup/" + h.name + ": " + c.Detail
			return c
		}
		loaded = append(loaded, h.name)
	}
	c.Status = StatusOK
	c.Detail = strings.Join(loaded, ", ") + " load"
	if st.opts.NoAttach || st.cgroup2 == "" {
		c.Detail += "; attach not tried"
		return c
	}
	if err := attachProbe(st.cgroup2); err != nil {
		var d string
		c.Status, d = classify(err)
		c.Detail += "; attach to a test cgroup failed: " + d
		return c
	}
	c.Detail += "; connect4 attaches to a cgroup"
	return c
}

// attachProbe attaches an allow-all connect4 program to a throw-away child
// cgroup (so no real process is affected), then detaches and removes it.
func attachProbe(cgroup2 string) error {
	dir := filepath.Join(cgroup2, fmt.Sprintf("agentfence-doctor-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create test cgroup: %w", err)
	}
	defer os.Remove(dir)
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect,
		Instructions: returnOne, License: "GPL",
	}, ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		return err
	}
	return l.Close()
}

func checkTracepoint() Check {
	c := progCheck(CheckTracePoint, false, ebpf.TracePoint, nil, "tracepoint",
		"no classic tracepoints: nothing disabled today (the process sensor uses raw tracepoints)")
	if c.Status != StatusOK {
		return c
	}
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(filepath.Join(dir, "events/sched/sched_process_exec/id")); err == nil {
			c.Detail += "; sched tracepoints in " + dir
			return c
		}
	}
	c.Status = StatusDegraded
	c.Detail += "; tracefs is not mounted, so classic tracepoints cannot be attached until it is (mount -t tracefs nodev /sys/kernel/tracing)"
	return c
}

func checkKprobe() Check {
	c := progCheck(CheckKprobe, false, ebpf.Kprobe, nil, "kprobe", "no kprobes: nothing disabled, agentfence does not need them")
	if c.Status != StatusOK {
		return c
	}
	// The kprobe program type exists whenever BPF tracing events do; the
	// attach point exists only with CONFIG_KPROBES, which registers the
	// kprobe perf PMU.
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe/type"); err != nil {
		c.Status = StatusMissing
		c.Detail = "the kprobe program type loads but there is no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel built without CONFIG_KPROBES"
		return c
	}
	c.Detail = "kprobe program loads; kprobe PMU present"
	return c
}

// checkUprobe says whether the TLS probes can be placed: uprobes are
// kprobe-type programs attached through the uprobe PMU.
func checkUprobe() Check {
	c := Check{Name: CheckUprobe, Impact: "no uprobes: " + tlsprobe.Fallback}
	if _, err := os.Stat("/sys/bus/event_source/devices/uprobe/type"); err != nil {
		c.Status = StatusMissing
		c.Detail = "no uprobe PMU (/sys/bus/event_source/devices/uprobe): kernel built without CONFIG_UPROBE_EVENTS"
		return c
	}
	c.Status = StatusOK
	c.Detail = "uprobe PMU present; placing a probe takes CAP_SYS_ADMIN (CAP_PERFMON is not enough for perf-based uprobes)"
	if libs, exes := tlsprobe.Libraries(), tlsprobe.Executables(); len(libs)+len(exes) > 0 {
		c.Detail += "; OpenSSL to probe: " + strings.Join(append(libs, exes...), ", ")
	} else {
		c.Detail += "; no libssl or node found on this host (members' own are probed at their exec)"
	}
	return c
}

func checkMaps(*run) []Check {
	maps := []struct {
		name   string
		mt     ebpf.MapType
		gate   bool
		impact string
	}{
		{CheckRingBuf, ebpf.RingBuf, true, "no ring buffer: the gate cannot run (decision events are sent through a ring buffer)"},
		{CheckLPMTrie, ebpf.LPMTrie, true, "no LPM trie: the gate cannot run (scopes are CIDR tries)"},
		{CheckHash, ebpf.Hash, true, "no hash map: the gate cannot run"},
		{CheckLRUHash, ebpf.LRUHash, false, "no LRU hash: nothing disabled, the shipped programs do not use it"},
		{CheckPerCPUArray, ebpf.PerCPUArray, true, "no per-CPU array: the gate cannot run (its counters are per-CPU)"},
		{CheckArray, ebpf.Array, true, "no array map: the gate cannot run (the session table is an array)"},
	}
	var out []Check
	for _, m := range maps {
		c := Check{Name: m.name, Gate: m.gate, Impact: m.impact}
		c.Status, c.Detail = classify(features.HaveMapType(m.mt))
		if c.Status == StatusOK {
			c.Detail = "map can be created"
		}
		out = append(out, c)
	}
	return out
}

func checkHelpers(*run) []Check {
	helpers := []struct {
		name   string
		fn     asm.BuiltinFunc
		impact string
	}{
		{CheckAncestorCgroup, asm.FnGetCurrentAncestorCgroupId, "the gate cannot run (sessions bound to a cgroup subtree are found through ancestor cgroup ids)"},
		{CheckCurrentCgroup, asm.FnGetCurrentCgroupId, "the gate cannot run"},
		{CheckKtimeBoot, asm.FnKtimeGetBootNs, "the gate cannot run (session expiry uses boot time)"},
		{CheckRingbufReserve, asm.FnRingbufReserve, "the gate cannot run (decision events)"},
		{CheckRingbufQuery, asm.FnRingbufQuery, "the gate cannot run (event wake-up batching)"},
	}
	var out []Check
	for _, h := range helpers {
		c := Check{Name: h.name, Gate: true, Impact: "no " + strings.TrimPrefix(h.name, "helper/") + " for cgroup_sock_addr: " + h.impact}
		c.Status, c.Detail = classify(features.HaveProgramHelper(ebpf.CGroupSockAddr, h.fn))
		if c.Status == StatusOK {
			c.Detail = "callable from cgroup_sock_addr programs"
		}
		out = append(out, c)
	}

	return out
}

func checkSockDestroy(st *run) []Check {
	o := st.opts
	c := Check{Name: CheckSockDestroy,
		Impact: "no SOCK_DESTROY: connections opened before a session was quarantined stay up until they close; new connects are still gated"}
	if o.NoSockDestroy {
		c.Status, c.Detail = StatusUnknown, "not tried (NoSockDestroy)"
		return []Check{c}
	}
	err := sockdestroy.ProbeDestroy()
	switch {
	case err == nil:
		c.Status, c.Detail = StatusOK, "destroyed a loopback TCP socket with sock_diag SOCK_DESTROY"
	case errors.Is(err, unix.EOPNOTSUPP):
		c.Status, c.Detail = StatusMissing, "kernel built without CONFIG_INET_DIAG_DESTROY (or without inet_diag): "+err.Error()
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		c.Status, c.Detail = StatusUnknown, "needs CAP_NET_ADMIN: "+err.Error()
	default:
		c.Status, c.Detail = StatusUnknown, err.Error()
	}
	p := Check{Name: CheckPidfdGetfd,
		Impact: "no pidfd_getfd: a revoked session's sockets are found with sock_diag dumps, which walk the host's whole socket table (slower revocation)"}
	switch err := probePidfdGetfd(); {
	case err == nil:
		p.Status, p.Detail = StatusOK, "copied an fd of this process with pidfd_getfd"
	case errors.Is(err, unix.ENOSYS):
		p.Status, p.Detail = StatusMissing, "pidfd_getfd needs Linux 5.6: "+err.Error()
	default:
		p.Status, p.Detail = StatusUnknown, err.Error()
	}
	it := Check{Name: CheckSockIter,
		Impact: "no per-process task_file iterator: a revoked session's sockets are named through pidfd_getfd, eight system calls a socket (slower revocation)"}
	if err := sockdestroy.ProbeIterator(); err != nil {
		it.Status, it.Detail = StatusMissing, "needs Linux 6.1 with BTF: "+err.Error()
	} else {
		it.Status, it.Detail = StatusOK, "listed this process's sockets with the task_file iterator"
	}
	return []Check{c, p, it}
}

// probePidfdGetfd copies one of this process's own fds through a pidfd, as
// agentfenced does with a session member's sockets.
func probePidfdGetfd() error {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer f.Close()
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, int(f.Fd()), 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd: %w", err)
	}
	return unix.Close(fd)
}
