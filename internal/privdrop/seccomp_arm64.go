package privdrop

import "golang.org/x/sys/unix"

// AArch64, and AArch32 with its own numbers (no socketcall in EABI).
var machineABIs = []abi{
	{arch: unix.AUDIT_ARCH_AARCH64, socket: 198, socketpair: 199, ioUringSetup: 425, seccomp: 277},
	{arch: unix.AUDIT_ARCH_ARM, socket: 281, socketpair: 288, ioUringSetup: 425, seccomp: 383},
}
