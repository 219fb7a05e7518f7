package privdrop

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The seccomp filter `agentfence run` installs with no_new_privs: a member
// may create sockets of the local families only (unix, inet, inet6,
// netlink; the gate judges inet, the others stay on the host). Every other
// family reaches a network below the gate's cgroup hooks (AF_PACKET, AF_XDP,
// AF_VSOCK, ...), so socket(2) and socketpair(2) for one fail with
// EAFNOSUPPORT: the errno that says "no such family here", which programs
// handle, and which tells the daemon's syscall exit program (bpf/
// boundary.c) that the filter refused it. The list is the kernel side's
// (enforcer.LocalFamilies); a test keeps them in step.
//
// io_uring_setup fails with ENOSYS, as it does under container runtimes'
// default profiles: io_uring creates sockets (IORING_OP_SOCKET) without
// the socket syscall, out of this filter's sight. Programs fall back to
// ordinary syscalls on ENOSYS. Where the BPF LSM runs, the kernel refuses
// such sockets however they are made, io_uring included.
//
// seccomp(2) may not install a filter with SECCOMP_FILTER_FLAG_NEW_LISTENER
// (EPERM): its listener answers the filtered process's syscalls for it, so
// a member holding one over a process it launched could hand that process
// its own files (SECCOMP_IOCTL_NOTIF_ADDFD) in place of the ones it opens:
// the agent's code in an MCP server judged by what it execs
// (docs/threat-model.md, route 32). Filters without it stay allowed: they
// only take away.
//
// The filter costs a few BPF instructions per syscall of the member and
// nothing to anyone else.

// LocalFamilies are the socket families the filter lets a member create.
var LocalFamilies = []uint32{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}

// abi is one syscall ABI the filter knows: its audit arch and numbers. A
// syscall from an ABI the filter does not know kills the process: its
// numbers mean other things.
type abi struct {
	arch                                      uint32
	socket, socketpair, ioUringSetup, seccomp uint32
	socketcall                                uint32 // 0: the ABI has none
	x32                                       bool   // x86_64: numbers with bit 30 are the x32 ABI
}

// seccomp_data offsets.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits on little-endian machines, the only ones built
	offArg1 = 24
)

const (
	retAllow  = unix.SECCOMP_RET_ALLOW
	retKill   = unix.SECCOMP_RET_KILL_PROCESS
	retNoFam  = unix.SECCOMP_RET_ERRNO | uint32(unix.EAFNOSUPPORT)
	retNoSys  = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	retNoPerm = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	sysSocket = 1 // socketcall(2) call numbers
	sysSockpr = 8
	x32Bit    = 0x40000000
)

// program is a classic BPF program under construction; jumps name labels,
// resolved by assemble.
type program struct {
	ins    []unix.SockFilter
	labels map[string]int
	fix    []fixup
}

type fixup struct {
	at     int
	jt, jf string
}

func (p *program) label(name string) { p.labels[name] = len(p.ins) }

func (p *program) ld(off uint32) {
	p.ins = append(p.ins, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off})
}

func (p *program) ret(v uint32) {
	p.ins = append(p.ins, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: v})
}

// jump adds a conditional jump; "" continues with the next instruction.
func (p *program) jump(op uint16, k uint32, jt, jf string) {
	p.fix = append(p.fix, fixup{len(p.ins), jt, jf})
	p.ins = append(p.ins, unix.SockFilter{Code: unix.BPF_JMP | op | unix.BPF_K, K: k})
}

func (p *program) assemble() ([]unix.SockFilter, error) {
	for _, f := range p.fix {
		for _, j := range []struct {
			name string
			dst  *uint8
		}{{f.jt, &p.ins[f.at].Jt}, {f.jf, &p.ins[f.at].Jf}} {
			if j.name == "" {
				continue
			}
			to, ok := p.labels[j.name]
			d := to - f.at - 1
			if !ok || d < 0 || d > 255 {
				return nil, fmt.Errorf("privdrop: seccomp label %q out of reach", j.name)
			}
			*j.dst = uint8(d)
		}
	}
	return p.ins, nil
}

// filter builds the filter for the ABIs of this machine.
func filter(abis []abi) ([]unix.SockFilter, error) {
	p := &program{labels: map[string]int{}}
	p.ld(offArch)
	for i, a := range abis {
		p.jump(unix.BPF_JEQ, a.arch, fmt.Sprint("abi", i), "")
	}
	p.ret(retKill)
	for i, a := range abis {
		p.label(fmt.Sprint("abi", i))
		p.ld(offNr)
		if a.x32 {
			p.jump(unix.BPF_JGE, x32Bit, "nosys", "")
		}
		p.jump(unix.BPF_JEQ, a.socket, "family", "")
		p.jump(unix.BPF_JEQ, a.socketpair, "family", "")
		p.jump(unix.BPF_JEQ, a.ioUringSetup, "nosys", "")
		p.jump(unix.BPF_JEQ, a.seccomp, "seccomp", "")
		if a.socketcall != 0 {
			// The family is in the member's memory, out of the filter's
			// reach: socketcall's socket and socketpair fail. C libraries
			// of this century call socket(2) directly.
			p.jump(unix.BPF_JEQ, a.socketcall, fmt.Sprint("socketcall", i), "")
		}
		p.ret(retAllow)
		if a.socketcall != 0 {
			p.label(fmt.Sprint("socketcall", i))
			p.ld(offArg0)
			p.jump(unix.BPF_JEQ, sysSocket, "nofamily", "")
			p.jump(unix.BPF_JEQ, sysSockpr, "nofamily", "")
			p.ret(retAllow)
		}
	}
	p.label("family")
	p.ld(offArg0)
	for _, f := range LocalFamilies {
		p.jump(unix.BPF_JEQ, f, "allow", "")
	}
	p.label("nofamily")
	p.ret(retNoFam)
	p.label("nosys")
	p.ret(retNoSys)
	p.label("seccomp")
	p.ld(offArg0)
	p.jump(unix.BPF_JEQ, unix.SECCOMP_SET_MODE_FILTER, "", "allow")
	p.ld(offArg1)
	p.jump(unix.BPF_JSET, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, "", "allow")
	p.ret(retNoPerm)
	p.label("allow")
	p.ret(retAllow)
	return p.assemble()
}

// installFilter installs the filter on the calling thread, which must
// already have no_new_privs; children inherit it.
func installFilter() error {
	ins, err := filter(machineABIs)
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(ins)), Filter: &ins[0]}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("install seccomp filter: %w", errno)
	}
	return nil
}
