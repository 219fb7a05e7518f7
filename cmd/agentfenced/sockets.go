package main

import (
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/session"
)

// sockets destroys member connections (enforcer/sockdestroy).
type sockets struct{ d *sockdestroy.Destroyer }

func (s sockets) Destroy(pids []int, match func(session.Conn) bool) ([]session.Conn, error) {
	var m func(sockdestroy.Conn) bool
	if match != nil {
		m = func(c sockdestroy.Conn) bool {
			return match(session.Conn{PID: c.PID, Proto: c.Proto, Remote: c.Remote})
		}
	}
	conns, err := s.d.Destroy(pids, m)
	out := make([]session.Conn, len(conns))
	for i, c := range conns {
		out[i] = session.Conn{PID: c.PID, Proto: c.Proto, Remote: c.Remote}
	}
	return out, err
}
