// The registers a uprobe sees, the user task's, whose layout is the
// architecture's ABI (read directly, no CO-RE): the C calling convention
// for OpenSSL (tls.c) and Go's register ABI for crypto/tls (tls_go.h).
// Also the system call numbers raw_tp/sys_enter tells the I/O apart by.
#pragma once

#if defined(__TARGET_ARCH_x86)
struct uregs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#define ARG1(r) ((r)->di)
#define ARG2(r) ((r)->si)
#define ARG3(r) ((r)->dx)
#define ARG4(r) ((r)->cx)
#define RET(r) ((r)->ax)
// Go's internal register ABI (1.17+): integer arguments and results in
// RAX, RBX, RCX, ...; the running goroutine (g) in R14.
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_ARG3(r) ((r)->cx)
#define GO_RET1(r) ((r)->ax)
#define GO_G(r) ((r)->r14)
// read, write, readv, writev, sendto, recvfrom, sendmsg, recvmsg
#define IS_IO(nr) ((nr) == 0 || (nr) == 1 || (nr) == 19 || (nr) == 20 || ((nr) >= 44 && (nr) <= 47))
#define SYSCALL_FD(regs) BPF_CORE_READ((struct pt_regs___tls *)(regs), di)
struct pt_regs___tls {
	unsigned long di;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct uregs {
	__u64 regs[31];
	__u64 sp, pc, pstate;
};
#define ARG1(r) ((r)->regs[0])
#define ARG2(r) ((r)->regs[1])
#define ARG3(r) ((r)->regs[2])
#define ARG4(r) ((r)->regs[3])
#define RET(r) ((r)->regs[0])
// Go's internal register ABI (1.18+ on arm64): R0, R1, R2, ...; g in R28.
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_ARG3(r) ((r)->regs[2])
#define GO_RET1(r) ((r)->regs[0])
#define GO_G(r) ((r)->regs[28])
// read, write, readv, writev, sendto, recvfrom, sendmsg, recvmsg
#define IS_IO(nr) ((nr) == 63 || (nr) == 64 || (nr) == 65 || (nr) == 66 || (nr) == 206 || (nr) == 207 || (nr) == 211 || (nr) == 212)
#define SYSCALL_FD(regs) BPF_CORE_READ((struct pt_regs___tls *)(regs), orig_x0)
struct pt_regs___tls {
	__u64 orig_x0;
} __attribute__((preserve_access_index));
#else
#error "tls.c: unknown architecture"
#endif
