package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Socket families no cgroup hook sees (bpf/boundary.c): a member may
// create unix, netlink and inet sockets only. The others (packet, XDP,
// vsock, CAN, ...) are refused by the BPF LSM where the host runs it, and
// are seen at the socket syscall's exit everywhere, where a refusal is
// recorded and a created socket is drift.

// FamilyLayer is the strongest layer that keeps members from sockets of
// other families on this host.
type FamilyLayer string

const (
	// FamiliesLSM: the BPF LSM refuses them (lsm/socket_create), however
	// the socket is asked for, io_uring included.
	FamiliesLSM FamilyLayer = "bpf_lsm"
	// FamiliesSyscallExit: the socket syscall's exit sees them
	// (raw_tp/sys_exit). Refusals come from `agentfence run`'s seccomp
	// filter or from capabilities; a socket that was created is drift.
	FamiliesSyscallExit FamilyLayer = "syscall_exit"
	// FamiliesNone: neither program runs; only `agentfence run`'s seccomp
	// filter and the capabilities it drops stand in the way, unrecorded.
	FamiliesNone FamilyLayer = "none"
)

// LocalFamilies are the socket families a member may create, from the C
// enum (bpf/boundary.c); internal/privdrop's seccomp filter repeats them.
var LocalFamilies = []int{
	int(boundaryAfLocalFamilyAF_LOCAL_UNIX), int(boundaryAfLocalFamilyAF_LOCAL_INET),
	int(boundaryAfLocalFamilyAF_LOCAL_INET6), int(boundaryAfLocalFamilyAF_LOCAL_NETLINK),
}

type families struct {
	objs  boundaryObjects
	links []link.Link
	layer FamilyLayer
	// lsmErr is why not FamiliesLSM where the kernel runs the BPF LSM.
	lsmErr error
}

// lsmFile lists the active LSMs; securityfs may need mounting first.
const lsmFile = "/sys/kernel/security/lsm"

// BPFLSMActive reports whether the kernel runs the BPF LSM: a program
// attached to an LSM hook where it does not is never called, so the file,
// not a successful attach, decides.
func BPFLSMActive() bool {
	b, err := os.ReadFile(lsmFile)
	if errors.Is(err, os.ErrNotExist) {
		// Not mounted (a container's /sys, say): mount it, once.
		_ = unix.Mount("securityfs", filepath.Dir(lsmFile), "securityfs", 0, "")
		b, err = os.ReadFile(lsmFile)
	}
	if err != nil {
		return false
	}
	for _, name := range bytes.Split(bytes.TrimSpace(b), []byte(",")) {
		if string(name) == "bpf" {
			return true
		}
	}
	return false
}

// boundarySpec is the object with lsm_refuses set, as loadFamilies and
// VerifyObjects load it.
func boundarySpec(lsm bool) (*ebpf.CollectionSpec, error) {
	spec, err := loadBoundary()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load socket family spec: %w", err)
	}
	var vars boundaryVariableSpecs
	if err := spec.Assign(&vars); err != nil {
		return nil, fmt.Errorf("enforcer: socket family spec: %w", err)
	}
	if lsm {
		if err := vars.LsmRefuses.Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("enforcer: set lsm_refuses: %w", err)
		}
	}
	return spec, nil
}

// loadFamilies loads and attaches the socket family programs on the gate's
// maps: the LSM program where the BPF LSM is active (unless noLSM), the
// syscall exit program in any case. Links are pinned under linkDir when it
// is set, so the refusal outlives the daemon like the gate does.
func loadFamilies(gate *gateObjects, linkDir string, noLSM bool) (*families, error) {
	lsm := !noLSM && BPFLSMActive()
	f, err := attachFamilies(gate, linkDir, lsm)
	if err != nil && lsm {
		// The LSM program would not load or attach (a kernel without BPF
		// trampolines): the exit program alone still records and applies
		// the drift action.
		lsmErr := err
		f, err = attachFamilies(gate, linkDir, false)
		if f != nil {
			f.lsmErr = lsmErr
		}
	}
	return f, err
}

func attachFamilies(gate *gateObjects, linkDir string, lsm bool) (_ *families, err error) {
	spec, err := boundarySpec(lsm)
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{
		"sessions":        gate.Sessions,
		"cgroup_sessions": gate.CgroupSessions,
		"pid_sessions":    gate.PidSessions,
		"gate_events":     gate.GateEvents,
		"gate_stats":      gate.GateStats,
	}
	f := &families{layer: FamiliesSyscallExit}
	defer func() {
		if err != nil {
			f.close(false)
		}
	}()
	// Load only the programs that will run: on a kernel without the BPF
	// LSM the LSM program may not even load.
	var objs struct {
		SysExit *ebpf.Program `ebpf:"af_sys_exit"`
	}
	if lsm {
		err = spec.LoadAndAssign(&f.objs, &ebpf.CollectionOptions{MapReplacements: repl})
	} else {
		err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: repl})
		f.objs.AfSysExit = objs.SysExit
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("enforcer: verifier rejected the socket family programs: %+v", ve)
		}
		return nil, fmt.Errorf("enforcer: load socket family programs: %w", err)
	}
	if lsm {
		l, err := link.AttachLSM(link.LSMOptions{Program: f.objs.AfLsmSocketCreate})
		if err != nil {
			return nil, fmt.Errorf("enforcer: attach lsm/socket_create: %w", err)
		}
		if err := f.keep(l, linkDir, "lsm_socket_create"); err != nil {
			return nil, err
		}
		if l, err = link.AttachLSM(link.LSMOptions{Program: f.objs.AfLsmPtrace}); err != nil {
			return nil, fmt.Errorf("enforcer: attach lsm/ptrace_access_check: %w", err)
		}
		if err := f.keep(l, linkDir, "lsm_ptrace"); err != nil {
			return nil, err
		}
		f.layer = FamiliesLSM
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_exit", Program: f.objs.AfSysExit})
	if err != nil {
		return nil, fmt.Errorf("enforcer: attach raw_tp/sys_exit: %w", err)
	}
	return f, f.keep(l, linkDir, "sys_exit")
}

// keep holds l and, with pinning, pins it in place of an earlier daemon's
// link of the same name. Tracing links cannot swap programs, so the old one
// goes only once the new one is attached: for that moment both run (a
// refusal may be recorded twice), rather than neither.
func (f *families) keep(l link.Link, linkDir, name string) error {
	f.links = append(f.links, l)
	if linkDir == "" {
		return nil
	}
	path := filepath.Join(linkDir, name)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		err = errors.Join(old.Unpin(), release(old))
		if err != nil {
			return fmt.Errorf("enforcer: replace pinned link %s: %w", path, err)
		}
	}
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("enforcer: pin link %s: %w", path, err)
	}
	return nil
}

// close releases the programs; unpinned links detach.
func (f *families) close(pinned bool) error {
	if f == nil {
		return nil
	}
	var errs []error
	for _, l := range f.links {
		if pinned {
			errs = append(errs, l.Close())
		} else {
			errs = append(errs, release(l))
		}
	}
	f.links = nil
	return errors.Join(append(errs, f.objs.Close())...)
}

// SocketFamilies says which layer keeps members from sockets of other
// families on this host and, below FamiliesLSM, why not a stronger one
// (nil where the kernel does not run the BPF LSM at all).
func (g *Gate) SocketFamilies() (FamilyLayer, error) {
	if g.fam == nil {
		return FamiliesNone, g.famErr
	}
	return g.fam.layer, g.fam.lsmErr
}

// familyNames are the socket families records name; others are family_N.
var familyNames = map[int]string{
	unix.AF_UNIX: "unix", unix.AF_INET: "inet", unix.AF_INET6: "inet6", unix.AF_NETLINK: "netlink",
	unix.AF_PACKET: "packet", unix.AF_XDP: "xdp", unix.AF_VSOCK: "vsock", unix.AF_CAN: "can",
	unix.AF_TIPC: "tipc", unix.AF_RDS: "rds", unix.AF_BLUETOOTH: "bluetooth", unix.AF_KCM: "kcm",
	unix.AF_SMC: "smc", unix.AF_QIPCRTR: "qipcrtr", unix.AF_ALG: "alg", unix.AF_LLC: "llc",
	unix.AF_IEEE802154: "ieee802154", unix.AF_PHONET: "phonet", unix.AF_CAIF: "caif", unix.AF_X25: "x25",
	unix.AF_AX25: "ax25", unix.AF_APPLETALK: "appletalk", unix.AF_ATMPVC: "atmpvc", unix.AF_ATMSVC: "atmsvc",
	unix.AF_MCTP: "mctp", unix.AF_RXRPC: "rxrpc", unix.AF_NFC: "nfc", unix.AF_ISDN: "isdn",
}

// FamilyName is the audit spelling of a socket family.
func FamilyName(f int) string {
	if n, ok := familyNames[f]; ok {
		return n
	}
	return fmt.Sprintf("family_%d", f)
}

// SocketTypeName is the audit spelling of a socket type.
func SocketTypeName(t int) string {
	switch t {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_DGRAM:
		return "dgram"
	case unix.SOCK_RAW:
		return "raw"
	case unix.SOCK_RDM:
		return "rdm"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_PACKET:
		return "packet"
	}
	return fmt.Sprintf("type_%d", t)
}
