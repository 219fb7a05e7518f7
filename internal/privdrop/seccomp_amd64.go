package privdrop

import "golang.org/x/sys/unix"

// x86_64, and i386 (int 0x80) with its own numbers.
var machineABIs = []abi{
	{arch: unix.AUDIT_ARCH_X86_64, socket: 41, socketpair: 53, ioUringSetup: 425, seccomp: 317, x32: true},
	{arch: unix.AUDIT_ARCH_I386, socket: 359, socketpair: 360, ioUringSetup: 425, seccomp: 354, socketcall: 102},
}
