package attribution

import (
	"testing"

	"github.com/agentfence/agentfence/config"
)

// The registry's default slot count is the kernel's session capacity,
// which config repeats and enforcer's TestSessionCapacity pins to the map.
func TestDefaultMaxSessions(t *testing.T) {
	if got := DefaultConfig().MaxSessions; got != config.MaxSessionsLimit {
		t.Errorf("DefaultConfig().MaxSessions = %d, the kernel has %d session slots", got, config.MaxSessionsLimit)
	}
}
