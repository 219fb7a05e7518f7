// Package privtest gates tests that need root and a real kernel. Outside CI
// they skip with the reason; under CI=true they fail, so CI can never go
// green by skipping the kernel.
package privtest

import (
	"os"
	"testing"
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
