// Package bpffs makes sure a BPF file system is mounted where pins go.
package bpffs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mounted reports whether dir is on a BPF file system.
func Mounted(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// Ensure mounts a BPF file system at dir unless one is there already.
func Ensure(dir string) error {
	if Mounted(dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}
