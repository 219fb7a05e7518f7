package main

import (
	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
)

// sockets destroys member connections (enforcer/sockdestroy).
type sockets struct{ d *sockdestroy.Destroyer }

func (s sockets) Destroy(pids []int, match func(attribution.Conn) bool) ([]attribution.Conn, error) {
	var m func(sockdestroy.Conn) bool
	if match != nil {
		m = func(c sockdestroy.Conn) bool {
			return match(attribution.Conn{PID: c.PID, Proto: c.Proto, Remote: c.Remote})
		}
	}
	conns, err := s.d.Destroy(pids, m)
	out := make([]attribution.Conn, len(conns))
	for i, c := range conns {
		out[i] = attribution.Conn{PID: c.PID, Proto: c.Proto, Remote: c.Remote}
	}
	return out, err
}
