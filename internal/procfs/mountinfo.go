// Package procfs reads what agentfence needs from /proc: the mount table
// (where cgroup v2 and bpffs are) and a process's cgroup.
package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of /proc/<pid>/mountinfo (see proc(5)).
type Mount struct {
	ID, Parent   int
	MajorMinor   string
	Root         string // the root of the mount within its filesystem
	MountPoint   string
	Options      string   // per-mount options
	Optional     []string // optional fields: shared:N, master:N, ...
	FSType       string
	Source       string
	SuperOptions string // per-superblock options
}

// ParseMountInfo parses the mountinfo format. Escaped characters in paths
// (\040 for a space, \011, \012, \134) are decoded.
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

func parseMountLine(line string) (Mount, error) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return Mount{}, fmt.Errorf("malformed: %q", line)
	}
	id, err := strconv.Atoi(f[0])
	if err != nil {
		return Mount{}, fmt.Errorf("bad mount id %q", f[0])
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil {
		return Mount{}, fmt.Errorf("bad parent id %q", f[1])
	}
	m := Mount{
		ID:         id,
		Parent:     parent,
		MajorMinor: f[2],
		Root:       unescape(f[3]),
		MountPoint: unescape(f[4]),
		Options:    f[5],
		FSType:     f[sep+1],
		Source:     unescape(f[sep+2]),
	}
	if sep > 6 {
		m.Optional = f[6:sep]
	}
	if len(f) > sep+3 {
		m.SuperOptions = f[sep+3]
	}
	return m, nil
}

// unescape decodes the octal escapes the kernel writes for space, tab,
// newline and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Visible drops mounts hidden by a later mount on the same mount point (in
// mountinfo order a later mount at the same path is on top), keeping the
// order of the rest.
func Visible(mounts []Mount) []Mount {
	top := map[string]int{}
	for i, m := range mounts {
		top[m.MountPoint] = i
	}
	var out []Mount
	for i, m := range mounts {
		if top[m.MountPoint] == i {
			out = append(out, m)
		}
	}
	return out
}

// FindCgroup2 returns the visible cgroup v2 mount agentfence should attach
// to. With several (a unified host seen through a bind mount, or a hybrid
// layout), /sys/fs/cgroup wins, then /sys/fs/cgroup/unified, then the first
// one found.
func FindCgroup2(mounts []Mount) (Mount, bool) {
	var found []Mount
	for _, m := range Visible(mounts) {
		if m.FSType == "cgroup2" {
			found = append(found, m)
		}
	}
	if len(found) == 0 {
		return Mount{}, false
	}
	for _, pref := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		for _, m := range found {
			if m.MountPoint == pref {
				return m, true
			}
		}
	}
	return found[0], true
}

// FindFS returns the visible mounts of filesystem type fstype.
func FindFS(mounts []Mount, fstype string) []Mount {
	var out []Mount
	for _, m := range Visible(mounts) {
		if m.FSType == fstype {
			out = append(out, m)
		}
	}
	return out
}

// ErrNoCgroup2 means no cgroup2 file system is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 mount")

// Cgroup2Mount returns where this process sees the unified hierarchy
// mounted (FindCgroup2): /sys/fs/cgroup on a pure v2 host,
// /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Mount() (string, error) {
	mounts, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	m, ok := FindCgroup2(mounts)
	if !ok {
		return "", ErrNoCgroup2
	}
	return m.MountPoint, nil
}

// ReadMountInfo parses the mountinfo file at path.
func ReadMountInfo(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountInfo(f)
}
