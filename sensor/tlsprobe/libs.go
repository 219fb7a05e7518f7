//go:build linux

package tlsprobe

import (
	"path/filepath"
	"slices"
)

// libDirs and libNames are where OpenSSL's libssl is found on the
// distributions agentfence supports: Debian and Ubuntu's multiarch
// directories, the lib64 of Fedora and its kin, and /usr/local.
var (
	libDirs  = []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib64", "/usr/local/lib"}
	libNames = []string{"libssl.so.3", "libssl.so.1.1"}
)

// Libraries lists the OpenSSL libraries on this host, each once: the
// files they resolve to (a uprobe is placed on the file, /lib and /usr/lib
// are often the same directory).
func Libraries() []string {
	var out []string
	for _, dir := range libDirs {
		for _, name := range libNames {
			p, err := filepath.EvalSymlinks(filepath.Join(dir, name))
			if err != nil || slices.Contains(out, p) {
				continue
			}
			out = append(out, p)
		}
	}
	return out
}
