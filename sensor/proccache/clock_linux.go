package proccache

import "golang.org/x/sys/unix"

// bootNow reads CLOCK_BOOTTIME, the clock of task start_boottime and of
// bpf_ktime_get_boot_ns.
func bootNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
