// Minimal CO-RE views of the kernel structures our programs read. Only the
// fields we touch are declared; preserve_access_index makes every access a
// relocation that the loader resolves against the running kernel's BTF, so
// offsets here are irrelevant and the same object works on amd64 and arm64.
// We deliberately avoid a generated vmlinux.h: it is per-arch, per-kernel and
// megabytes of noise in review.
#pragma once

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

struct super_block {
	__u32 s_dev; // dev_t, kernel encoding (major << 20 | minor)
};

struct inode {
	unsigned short i_mode; // umode_t
	unsigned long i_ino;
	struct super_block *i_sb;
};

struct file {
	struct inode *f_inode;
	void *private_data; // a socket file's struct socket
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
};

struct signal_struct {
	atomic_t live;
};

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct mm_struct *mm;
	struct signal_struct *signal;
	struct files_struct *files;
	__u64 start_boottime; // 5.5+
	__u64 real_start_time; // before 5.5; same clock under the old name
};

struct linux_binprm {
	struct file *file;
	const char *filename;
	const char *interp;
};

// Contexts of the BPF iterators (sockiter.c, members.c).
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct file *file;
};

#pragma clang attribute pop
