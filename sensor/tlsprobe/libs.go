//go:build linux

package tlsprobe

import (
	"os"
	"os/exec"
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

// bundlers are executables that carry their own OpenSSL, exported for
// their add-ons to link against: node, at the paths distributions and
// its own installer put it.
var bundlers = []string{"/usr/bin/node", "/usr/bin/nodejs", "/usr/local/bin/node"}

// Executables lists the executables with their own OpenSSL on this host,
// each once, as files (see Libraries): node at the usual paths and on the
// daemon's PATH.
func Executables() []string {
	paths := slices.Clone(bundlers)
	for _, name := range []string{"node", "nodejs"} {
		if p, err := exec.LookPath(name); err == nil {
			paths = append(paths, p)
		}
	}
	return existing(paths)
}

// Libraries lists the OpenSSL libraries on this host, each once: the
// files they resolve to (a uprobe is placed on the file, /lib and /usr/lib
// are often the same directory).
func Libraries() []string { return existing(candidates("")) }

// LibrariesIn lists the OpenSSL libraries and executables with their own
// under root, a process's root directory as /proc/PID/root shows it (a
// container's). The paths are not resolved, which would leave root
// through its magic link; Attach tells files apart by inode.
func LibrariesIn(root string) []string {
	var out []string
	for _, p := range append(candidates(root), rooted(root, bundlers)...) {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			out = append(out, p)
		}
	}
	return out
}

func candidates(root string) []string {
	var paths []string
	for _, dir := range libDirs {
		for _, name := range libNames {
			paths = append(paths, filepath.Join(root, dir, name))
		}
	}
	return paths
}

func rooted(root string, paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Join(root, p)
	}
	return out
}

// existing resolves the paths that exist, each file once.
func existing(paths []string) []string {
	var out []string
	for _, path := range paths {
		p, err := filepath.EvalSymlinks(path)
		if err != nil || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	return out
}
