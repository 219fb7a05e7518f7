// Package privtest gates tests that need root and a real kernel. Outside CI
// they skip with the reason; under CI=true they fail, so CI can never go
// green by skipping the kernel.
package privtest

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips (or, under CI, fails) unless the test runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "needs root (CAP_BPF, CAP_NET_ADMIN, cgroup writes)")
	}
}

// Unavailable skips the test with reason outside CI and fails it under CI.
func Unavailable(tb testing.TB, reason string) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("required under CI=true but unavailable: %s", reason)
	}
	tb.Skip(reason)
}

// KernelBefore reports whether the running kernel is older than
// major.minor. Tests use it to tell a feature the kernel cannot have (skip,
// naming it, even under CI) from one it should have (a failure): on a
// kernel new enough, a missing feature is a bug, not a reason to skip.
func KernelBefore(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		return false
	}
	return maj < major || maj == major && min < minor
}

// NeedsKernel skips the test, even under CI, on kernels older than
// major.minor, which lack feature.
func NeedsKernel(tb testing.TB, major, minor int, feature string) {
	tb.Helper()
	if KernelBefore(major, minor) {
		tb.Skipf("kernel before %d.%d has no %s", major, minor, feature)
	}
}

// Emulated reports whether the tests run in a VM under emulation (make
// vmtest sets AGENTFENCE_EMULATED): every exec and program load is 20-50
// times slower there.
func Emulated() bool { return os.Getenv("AGENTFENCE_EMULATED") == "1" }

// Rounds is n, or a tenth of it under emulation: stress tests keep their
// shape (thousands of short-lived processes, DNS rounds) at a size a VM
// runs in minutes rather than an hour.
func Rounds(n int) int {
	if Emulated() {
		return max(n/10, 1)
	}
	return n
}

// BPFFS mounts a private bpffs in a temporary directory for the test's
// pins and returns its path. It is unmounted lazily at the end: a plain
// unmount fails with EBUSY while any process still holds something on it,
// and the directory is then left unremovable.
func BPFFS(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)
	mnt := tb.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		Unavailable(tb, "mount a bpffs for the pins: "+err.Error())
	}
	tb.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt
}
