// Package boottime converts between the kernel's boot clock and wall time.
package boottime

import (
	"time"

	"golang.org/x/sys/unix"
)

// Now is the time on CLOCK_BOOTTIME, the clock the kernel stamps events and
// session expiries with (it keeps counting through suspend and is never
// stepped, unlike the wall clock).
func Now() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

// Clock converts kernel boot-clock stamps to wall-clock time. It is the one
// place that conversion happens.
type Clock struct {
	offset int64 // realtime - boottime, ns
}

// NewClock measures the offset between the wall clock and the boot clock.
// Call Sync again after the wall clock may have been stepped.
func NewClock() *Clock {
	c := &Clock{}
	c.Sync()
	return c
}

// Sync re-measures the offset, reading the boot clock on both sides of the
// wall clock so the error is at most half the bracket.
func (c *Clock) Sync() {
	b1 := Now()
	wall := time.Now().UnixNano()
	b2 := Now()
	c.offset = wall - int64(b1+(b2-b1)/2)
}

// Wall returns the wall-clock time of a boot-clock stamp.
func (c *Clock) Wall(bootNS uint64) time.Time {
	return time.Unix(0, int64(bootNS)+c.offset).UTC()
}

// Boot returns the boot-clock stamp of a wall-clock time. A time before
// this boot is 1, the earliest stamp: 0 would mean "never" to the kernel.
func (c *Clock) Boot(t time.Time) uint64 {
	ns := t.UnixNano() - c.offset
	if ns < 1 {
		return 1
	}
	return uint64(ns)
}
