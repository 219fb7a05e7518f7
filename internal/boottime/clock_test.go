package boottime

import (
	"testing"
	"time"
)

func TestClockRoundTrip(t *testing.T) {
	c := NewClock()
	now := time.Now()
	if got := c.Wall(c.Boot(now)); !got.Equal(now.Round(0).UTC()) {
		t.Errorf("Wall(Boot(now)) = %s, want %s", got, now)
	}
	if w := c.Wall(Now()); w.Sub(time.Now()).Abs() > 50*time.Millisecond {
		t.Errorf("Wall(Now()) = %s, now %s", w, time.Now())
	}
}

func TestBootBeforeThisBoot(t *testing.T) {
	// 0 means "never" to the kernel, so a time before boot is the earliest
	// stamp instead.
	if got := NewClock().Boot(time.Unix(0, 0)); got != 1 {
		t.Errorf("Boot(1970) = %d, want 1", got)
	}
}
