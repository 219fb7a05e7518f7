package enforcer

import "github.com/cilium/ebpf"

// The gate's maps that the process programs (sensor) share, besides
// PidSessions and ProcExe: they bind a member by cgroup per process, and
// report a member's move to another cgroup on the gate's ring, counted
// against the session's budget like a denial.

// Sessions is the session slot array.
func (g *Gate) Sessions() *ebpf.Map { return g.objs.Sessions }

// Slots is how many session slots the gate's maps hold, slot 0 included.
func (g *Gate) Slots() int { return int(g.objs.Sessions.MaxEntries()) }

// CgroupSessions is the cgroup id → session binding map.
func (g *Gate) CgroupSessions() *ebpf.Map { return g.objs.CgroupSessions }

// StatsMap is the per-CPU counter array Stats reads.
func (g *Gate) StatsMap() *ebpf.Map { return g.objs.GateStats }
