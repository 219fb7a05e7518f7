// Package privdrop starts a command without the keys to the gate: with
// no_new_privs set, and without the capabilities that can disable or bypass
// the egress gate, edit its maps, leave the session's cgroup, or reach into
// other processes (docs/threat-model.md says why each one is on the list).
package privdrop

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Cap is a Linux capability number (CAP_NET_RAW is 13).
type Cap int

// names are the capabilities of linux/capability.h, by number.
var names = [...]string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// The capabilities the gate set names.
const (
	NetAdmin  Cap = unix.CAP_NET_ADMIN
	NetRaw    Cap = unix.CAP_NET_RAW
	SysModule Cap = unix.CAP_SYS_MODULE
	SysRawIO  Cap = unix.CAP_SYS_RAWIO
	SysPtrace Cap = unix.CAP_SYS_PTRACE
	SysAdmin  Cap = unix.CAP_SYS_ADMIN
	Perfmon   Cap = unix.CAP_PERFMON
	BPF       Cap = unix.CAP_BPF
)

// Gate is what `agentfence run` takes from the command unless kept: each
// of these reaches the gate's programs or maps, the network below the
// gate's hooks, the cgroup tree, or other processes' memory.
var Gate = []Cap{SysAdmin, BPF, NetAdmin, NetRaw, SysPtrace, SysModule, Perfmon, SysRawIO}

func (c Cap) String() string {
	if c >= 0 && int(c) < len(names) {
		return names[c]
	}
	return fmt.Sprintf("CAP_%d", int(c))
}

// Parse reads a capability name, case-insensitively, with or without the
// CAP_ prefix: CAP_NET_RAW, net_raw and Net_Raw are the same.
func Parse(name string) (Cap, error) {
	up := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(up, "CAP_") {
		up = "CAP_" + up
	}
	for i, n := range names {
		if n == up {
			return Cap(i), nil
		}
	}
	return 0, fmt.Errorf("unknown capability %q (want a name such as CAP_NET_RAW or net_raw)", name)
}

// Drops is Gate without keep, in Gate's order.
func Drops(keep []Cap) []Cap {
	var out []Cap
	for _, c := range Gate {
		kept := false
		for _, k := range keep {
			kept = kept || k == c
		}
		if !kept {
			out = append(out, c)
		}
	}
	return out
}

// Kept returns the members of Gate that keep names, once each, in Gate's
// order: the canonical form of what a launcher keeps.
func Kept(keep []Cap) []Cap {
	var out []Cap
	for _, c := range Gate {
		for _, k := range keep {
			if k == c {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// Names returns the names of cs (nil for none).
func Names(cs []Cap) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.String())
	}
	return out
}

// InGate reports whether c is one of the capabilities run drops.
func InGate(c Cap) bool {
	for _, g := range Gate {
		if g == c {
			return true
		}
	}
	return false
}

// Start starts cmd with no_new_privs, without the capabilities in drop
// in its bounding, inheritable, ambient, permitted and effective sets, and
// under the seccomp filter that keeps it to the local socket families
// (seccomp.go). The calling process keeps all of its own.
//
// Go's SysProcAttr can raise ambient capabilities but has no field for
// no_new_privs or the bounding set, and whatever runs between fork and
// exec in Go's child is the runtime's. Both are per-thread state, though,
// which clone copies from the calling thread: so the restrictions are
// applied to one OS thread, locked to a goroutine that is never unlocked,
// and cmd is started from that thread. The child inherits them, goes
// straight into exec (and, with CgroupFD, into its cgroup at clone), and
// the runtime ends the thread when the goroutine returns, so no other
// goroutine ever runs with them. That needs no second exec of agentfence
// as a launcher stage, and runs nothing outside the session.
func Start(cmd *exec.Cmd, drop []Cap) error {
	if cmd.SysProcAttr != nil && len(cmd.SysProcAttr.AmbientCaps) > 0 {
		return errors.New("privdrop: cmd raises ambient capabilities itself")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread's credentials are changed for good.
		errc <- startFromThread(cmd, drop)
	}()
	return <-errc
}

// startFromThread restricts the calling thread, which must be locked, and
// starts cmd from it.
func startFromThread(cmd *exec.Cmd, drop []Cap) error {
	if err := restrictThread(drop); err != nil {
		return err
	}
	return cmd.Start()
}

// restrictThread applies the restrictions to the calling thread.
func restrictThread(drop []Cap) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	for _, c := range drop {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			continue // a capability this kernel does not have (CAP_BPF before 5.8)
		}
		if err != nil {
			return fmt.Errorf("read bounding set: %w", err)
		}
		if in == 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			// Without CAP_SETPCAP the bounding set cannot be lowered. The
			// other sets lose them below, and under no_new_privs no exec
			// adds to the permitted set, so the command cannot regain
			// them either way: the bounding set is the second lock. A
			// non-root caller (who rarely holds CAP_SETPCAP) goes on without
			// it. A root one is refused: a root command whose bounding set
			// still holds the gate set is an odd setup, better named than
			// started.
			if errors.Is(err, unix.EPERM) && !rootIDs() {
				continue
			}
			return fmt.Errorf("drop %s from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for _, c := range drop {
		if c < 0 || c >= 64 {
			continue
		}
		bit := ^uint32(1 << (uint(c) % 32))
		d := &data[c/32]
		d.Effective &= bit
		d.Permitted &= bit
		d.Inheritable &= bit
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("lower capabilities: %w", err)
	}
	if err := installFilter(); err != nil {
		return err
	}
	for _, c := range drop {
		// Lowering the inheritable set already removed them from the
		// ambient set; say so explicitly (EINVAL: unknown to the kernel).
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, uintptr(c), 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop %s from the ambient set: %w", c, err)
		}
	}
	return nil
}

// rootIDs reports whether the thread has uid 0 as its real, effective or
// saved user id: then an exec is root's, or a setuid call can make it so.
func rootIDs() bool {
	r, e, s := unix.Getresuid()
	return r == 0 || e == 0 || s == 0
}
