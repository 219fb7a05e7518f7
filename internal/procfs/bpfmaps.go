package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// BPFMap is what /proc/PID/fdinfo says of a BPF map a process holds.
type BPFMap struct {
	Type       uint32 // enum bpf_map_type
	MaxEntries uint32
}

// BPFMaps lists the BPF maps a process holds open, from its fdinfo: what
// a test asks to see that a collection was loaded or freed. A descriptor
// that closes while it is read is skipped.
func BPFMaps(pid int) ([]BPFMap, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []BPFMap
	for _, fd := range fds {
		if l, err := os.Readlink(dir + "/" + fd.Name()); err != nil || l != "anon_inode:bpf-map" {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if m, ok := ParseBPFMapInfo(string(b)); ok {
			out = append(out, m)
		}
	}
	return out, nil
}

// ParseBPFMapInfo reads a map's type and size from the text of its fdinfo.
func ParseBPFMapInfo(s string) (BPFMap, bool) {
	var m BPFMap
	var typ, size bool
	for _, line := range strings.Split(s, "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
		if err != nil {
			continue
		}
		switch name {
		case "map_type":
			m.Type, typ = uint32(n), true
		case "max_entries":
			m.MaxEntries, size = uint32(n), true
		}
	}
	return m, typ && size
}
