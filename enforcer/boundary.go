package enforcer

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/ringsize"
)

// Socket families no cgroup hook sees (bpf/boundary.c): a member may
// create unix, netlink and inet sockets only. The others (packet, XDP,
// vsock, CAN, ...) are refused at the kernel's socket_create LSM hook where
// the host lets a program run there, and are seen at the socket syscall's
// exit everywhere, where a refusal is recorded and a created socket is
// drift. The same hook layer refuses a member's ptrace of processes
// outside its session and, in sessions that launch MCP servers, any ptrace
// and the receipt of inet sockets.

// FamilyLayer is the strongest layer that keeps members from sockets of
// other families, and from other processes, on this host.
type FamilyLayer string

const (
	// FamiliesLSM: BPF LSM programs refuse them (lsm/socket_create,
	// lsm/ptrace_access_check, ...), however the socket is asked for,
	// io_uring included.
	FamiliesLSM FamilyLayer = "bpf_lsm"
	// FamiliesFmodRet: the same checks, as tracing programs that modify
	// the return of the kernel's security_* functions (fmod_ret), which
	// the kernel allows without the BPF LSM: what most distribution
	// kernels, which build it but leave it out of lsm=, get.
	FamiliesFmodRet FamilyLayer = "fmod_ret"
	// FamiliesSyscallExit: the socket syscall's exit sees them
	// (raw_tp/sys_exit). Refusals come from `agentfence run`'s seccomp
	// filter or from capabilities; a socket that was created is drift.
	// Nothing sees ptrace or a received socket.
	FamiliesSyscallExit FamilyLayer = "syscall_exit"
	// FamiliesNone: neither program runs; only `agentfence run`'s seccomp
	// filter and the capabilities it drops stand in the way, unrecorded.
	FamiliesNone FamilyLayer = "none"
)

// Refuses reports whether the layer refuses at the LSM hooks (and so
// keeps members from processes outside their session).
func (l FamilyLayer) Refuses() bool { return l == FamiliesLSM || l == FamiliesFmodRet }

// layers are the ones loadFamilies tries, strongest first.
var layers = []FamilyLayer{FamiliesLSM, FamiliesFmodRet, FamiliesSyscallExit}

// LocalFamilies are the socket families a member may create, from the C
// enum (bpf/boundary.c); internal/privdrop's seccomp filter repeats them.
var LocalFamilies = []int{
	int(boundaryAfLocalFamilyAF_LOCAL_UNIX), int(boundaryAfLocalFamilyAF_LOCAL_INET),
	int(boundaryAfLocalFamilyAF_LOCAL_INET6), int(boundaryAfLocalFamilyAF_LOCAL_NETLINK),
}

type families struct {
	coll  *ebpf.Collection
	links []link.Link
	layer FamilyLayer
	// whyNot is why not a stronger layer (nil where the host has none).
	whyNot error
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

// inLayer reports whether program p runs in layer: the syscall exit
// program in every layer, the hook programs in theirs.
func inLayer(p *ebpf.ProgramSpec, layer FamilyLayer) bool {
	switch p.Type {
	case ebpf.LSM:
		return layer == FamiliesLSM
	case ebpf.Tracing:
		return layer == FamiliesFmodRet
	}
	return true
}

// boundarySpec is the object as loadFamilies and VerifyObjects load it
// for layer: its programs only, lsm_refuses set for a hook layer.
func boundarySpec(layer FamilyLayer) (*ebpf.CollectionSpec, error) {
	spec, err := loadBoundary()
	if err != nil {
		return nil, fmt.Errorf("enforcer: load socket family spec: %w", err)
	}
	var vars boundaryVariableSpecs
	if err := spec.Assign(&vars); err != nil {
		return nil, fmt.Errorf("enforcer: socket family spec: %w", err)
	}
	if err := vars.LsmRefuses.Set(b2u8(layer.Refuses())); err != nil {
		return nil, fmt.Errorf("enforcer: set lsm_refuses: %w", err)
	}
	for name, p := range spec.Programs {
		if !inLayer(p, layer) {
			delete(spec.Programs, name)
		}
	}
	return spec, nil
}

func b2u8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// tryLayers returns the layers to try, strongest first, from ceiling
// down ("" is the strongest); the BPF LSM's only where the kernel runs it.
func tryLayers(ceiling FamilyLayer) ([]FamilyLayer, error) {
	i := 0
	if ceiling != "" {
		if i = slices.Index(layers, ceiling); i < 0 {
			return nil, fmt.Errorf("enforcer: unknown boundary layer %q", ceiling)
		}
	}
	try := layers[i:]
	if try[0] == FamiliesLSM && !BPFLSMActive() {
		// Its programs would load and attach, and never be called.
		return try[1:], nil
	}
	return try, nil
}

// loadFamilies loads and attaches the boundary programs on the gate's
// maps: those of the strongest layer the host takes, at most ceiling.
// Links are pinned under linkDir when it is set, so the refusal outlives
// the daemon like the gate does.
func loadFamilies(gate *gateObjects, linkDir string, ceiling FamilyLayer) (*families, error) {
	try, err := tryLayers(ceiling)
	if err != nil {
		return nil, err
	}
	var whyNot []error
	for _, layer := range try {
		f, err := attachFamilies(gate, linkDir, layer)
		if err == nil {
			f.whyNot = errors.Join(whyNot...)
			return f, nil
		}
		// A kernel without BPF trampolines, say: the next layer down.
		whyNot = append(whyNot, fmt.Errorf("%s: %w", layer, err))
	}
	return nil, errors.Join(whyNot...)
}

func attachFamilies(gate *gateObjects, linkDir string, layer FamilyLayer) (_ *families, err error) {
	spec, err := boundarySpec(layer)
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
	ringsize.FromReplacements(spec, repl)
	f := &families{layer: layer}
	defer func() {
		if err != nil {
			f.close(false)
		}
	}()
	f.coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("enforcer: verifier rejected the boundary programs: %+v", ve)
		}
		return nil, fmt.Errorf("enforcer: load boundary programs: %w", err)
	}
	// The hooks first: with lsm_refuses set, the exit program leaves their
	// refusals to them.
	names := slices.Sorted(maps.Keys(f.coll.Programs))
	names = append(slices.DeleteFunc(names, func(n string) bool { return n == boundaryProgAfSysExit }), boundaryProgAfSysExit)
	for _, name := range names {
		prog := f.coll.Programs[name]
		var l link.Link
		switch prog.Type() {
		case ebpf.LSM:
			l, err = link.AttachLSM(link.LSMOptions{Program: prog})
		case ebpf.Tracing:
			l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachModifyReturn})
		default:
			l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_exit", Program: prog})
		}
		if err != nil {
			return nil, fmt.Errorf("enforcer: attach %s: %w", spec.Programs[name].SectionName, err)
		}
		if err := f.keep(l, linkDir, linkName(name)); err != nil {
			return nil, err
		}
	}
	if linkDir != "" {
		// An earlier daemon's links of another layer would run beside
		// these: refusing twice, recording twice.
		all, err := loadBoundary()
		if err != nil {
			return nil, err
		}
		for name := range all.Programs {
			if _, ok := f.coll.Programs[name]; !ok {
				if err := unpinLink(filepath.Join(linkDir, linkName(name))); err != nil {
					return nil, err
				}
			}
		}
	}
	return f, nil
}

// linkName is the pin name of a boundary program's link: lsm_ptrace for
// af_lsm_ptrace.
func linkName(prog string) string { return strings.TrimPrefix(prog, "af_") }

// unpinLink detaches and removes the link pinned at path, if there is one.
func unpinLink(path string) error {
	old, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("enforcer: load pinned link %s: %w", path, err)
	}
	if err := errors.Join(old.Unpin(), release(old)); err != nil {
		return fmt.Errorf("enforcer: remove pinned link %s: %w", path, err)
	}
	return nil
}

// keep holds l and, with pinning, pins it in place of an earlier daemon's
// link of the same name (pinInPlace).
func (f *families) keep(l link.Link, linkDir, name string) error {
	f.links = append(f.links, l)
	return pinInPlace(l, linkDir, name)
}

// pinInPlace pins l under linkDir (when set) in place of an earlier
// daemon's link of the same name. Tracing links cannot swap programs, so
// the old one goes only once the new one is attached: for that moment both
// run (a refusal may be recorded twice), rather than neither.
func pinInPlace(l link.Link, linkDir, name string) error {
	if linkDir == "" {
		return nil
	}
	path := filepath.Join(linkDir, name)
	if err := unpinLink(path); err != nil {
		return fmt.Errorf("enforcer: replace pinned link: %w", err)
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
	err := closeLinks(f.links, pinned)
	f.links = nil
	if f.coll != nil {
		f.coll.Close()
	}
	return err
}

// closeLinks closes this process's handles on links; unpinned, each
// detaches.
func closeLinks(links []link.Link, pinned bool) error {
	var errs []error
	for _, l := range links {
		if pinned {
			errs = append(errs, l.Close())
		} else {
			errs = append(errs, release(l))
		}
	}
	return errors.Join(errs...)
}

// SocketFamilies says which layer keeps members from sockets of other
// families (and from other processes) on this host and, below
// FamiliesLSM, why not a stronger one (nil where there was none to try).
func (g *Gate) SocketFamilies() (FamilyLayer, error) {
	if g.fam == nil {
		return FamiliesNone, g.famErr
	}
	return g.fam.layer, g.fam.whyNot
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
