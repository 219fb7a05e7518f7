package proccache

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// userHZ is the unit of /proc/<pid>/stat times. The kernel fixes USER_HZ at
// 100 on every architecture Linux supports for userspace ABI purposes.
const userHZ = 100

const nsPerTick = 1_000_000_000 / userHZ

// statInfo is what the cache needs from /proc/<pid>/stat.
type statInfo struct {
	Comm       string
	PPID       uint32
	StartTicks uint64 // field 22, start_boottime in USER_HZ ticks
}

var errStat = errors.New("malformed /proc stat")

// parseStat parses /proc/<pid>/stat. comm is found between the first '(' and
// the last ')' because a command name may itself contain spaces and parens.
func parseStat(b []byte) (statInfo, error) {
	var s statInfo
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return s, errStat
	}
	s.Comm = string(b[open+1 : closing])
	// After ") " come fields 3.. (state is field 3).
	f := strings.Fields(string(b[closing+1:]))
	// field n is f[n-3]
	if len(f) < 22-2 {
		return s, fmt.Errorf("%w: %d fields after comm", errStat, len(f))
	}
	ppid, err := strconv.ParseUint(f[4-3], 10, 32)
	if err != nil {
		return s, fmt.Errorf("%w: ppid: %v", errStat, err)
	}
	start, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return s, fmt.Errorf("%w: starttime: %v", errStat, err)
	}
	s.PPID, s.StartTicks = uint32(ppid), start
	return s, nil
}

// parseStatusIDs returns the real uid and gid from /proc/<pid>/status, the
// ids bpf_get_current_uid_gid reports.
func parseStatusIDs(b []byte) (uid, gid uint32, err error) {
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		var dst *uint32
		var rest string
		var ok bool
		if rest, ok = strings.CutPrefix(line, "Uid:"); ok {
			dst = &uid
		} else if rest, ok = strings.CutPrefix(line, "Gid:"); ok {
			dst = &gid
		} else {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, 0, errors.New("malformed status id line")
		}
		v, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("status ids: %w", err)
		}
		*dst = uint32(v)
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("status without Uid/Gid")
	}
	return uid, gid, nil
}

// splitCmdline splits /proc/<pid>/cmdline the way the kernel's exec record
// is split, bounded to max bytes so seeded and event-fed entries look alike.
func splitCmdline(b []byte, max int) (args []string, truncated bool) {
	if len(b) > max {
		b, truncated = b[:max], true
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, truncated
	}
	for _, p := range bytes.Split(b, []byte{0}) {
		args = append(args, string(p))
	}
	return args, truncated
}
