package procfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ProcCgroupPath returns the unified-hierarchy path of a process from the
// "0::" line of /proc/<pid>/cgroup.
func ProcCgroupPath(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	return ParseProcCgroup(string(b))
}

// ParseProcCgroup extracts the "0::" path from /proc/<pid>/cgroup contents.
func ParseProcCgroup(s string) (string, error) {
	for _, line := range strings.Split(s, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}
