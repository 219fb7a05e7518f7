package proccache

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/agentfence/agentfence/internal/procfs"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/cgroupmeta"
)

// procSnapshot reads what /proc says about one process. Any file may vanish
// mid-read (the process exits); the stat file is the only one required.
func (c *Cache) procSnapshot(tgid uint32) (*entry, bool) {
	dir := filepath.Join(c.cfg.ProcRoot, strconv.FormatUint(uint64(tgid), 10))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return nil, false
	}
	st, err := parseStat(b)
	if err != nil {
		return nil, false
	}
	e := &entry{coarse: true}
	e.TGID, e.Start, e.PPID = tgid, st.StartTicks*nsPerTick, st.PPID
	e.Source = SourceProc
	if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		e.UID, e.GID, _ = parseStatusIDs(b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		args, trunc := splitCmdline(b, sensor.ArgvMax)
		e.Args, e.ArgsTruncated = sanitizeArgs(args, trunc, c.cfg.Redact), trunc
	}
	if p, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
		e.ExePath, e.ExeDeleted = strings.CutSuffix(p, " (deleted)")
		var s syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, "exe"), &s) == nil {
			e.Exe = sensor.ExeIDOf(&s)
			e.HashState = HashPending
		}
	} else {
		// Kernel threads have no exe; their comm is all there is.
		e.ExePath = "[" + st.Comm + "]"
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
		if p, err := procfs.ParseProcCgroup(string(b)); err == nil {
			e.CgroupPath, e.Container = p, cgroupmeta.Parse(p)
		}
	}
	return e, true
}

func (c *Cache) listProc() []uint32 {
	ents, err := os.ReadDir(c.cfg.ProcRoot)
	if err != nil {
		return nil
	}
	var out []uint32
	for _, d := range ents {
		if n, err := strconv.ParseUint(d.Name(), 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// Seed adds every process in /proc that the cache does not know. Call it
// once after loading the programs and before Run.
func (c *Cache) Seed() int { return c.scan(false) }

// Reconcile re-reads /proc after lost events: processes that are gone are
// marked exited, unknown ones are added.
func (c *Cache) Reconcile() int { return c.scan(true) }

func (c *Cache) scan(retire bool) int {
	pids := c.listProc()
	// Read /proc without the lock: it is slow and events keep flowing.
	snaps := make([]*entry, 0, len(pids))
	for _, pid := range pids {
		if e, ok := c.procSnapshot(pid); ok {
			snaps = append(snaps, e)
		}
	}
	now := c.cfg.Now()
	var jobs []*hashJob
	added := 0
	c.mu.Lock()
	c.epoch++
	if retire {
		alive := make(map[Key]bool, len(snaps))
		for _, e := range snaps {
			alive[Key{e.TGID, e.Start / nsPerTick}] = true
		}
		for _, list := range c.procs {
			for _, e := range list {
				// Only entries older than the scan can be judged by it.
				if !e.Exited && e.Start < now && !alive[Key{e.TGID, e.Start / nsPerTick}] {
					c.markExited(e, now, 0)
				}
			}
		}
	}
	for _, e := range snaps {
		if c.find(e.TGID, e.Start) != nil {
			continue
		}
		c.insert(e, now)
		added++
		if e.HashState == HashPending {
			jobs = append(jobs, &hashJob{key: e.Key, exe: e.Exe, path: e.ExePath})
		}
	}
	c.mu.Unlock()
	for _, j := range jobs {
		c.hasher.enqueue(j)
	}
	return added
}
