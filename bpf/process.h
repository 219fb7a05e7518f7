// Events emitted by process.c on the proc_events ring buffer. Go gets these
// layouts through bpf2go -type; keep every field naturally aligned and pad
// explicitly so the C and Go views cannot drift.
#pragma once

#define AF_FILENAME_MAX 256
// Total argv bytes per exec. 1024 covers the interesting part of nearly every
// agent command line while keeping an exec record near 1.6 KiB.
#define AF_ARGV_MAX 1024

enum af_proc_event_type {
	AF_PROC_EXEC = 1,
	AF_PROC_FORK = 2,
	AF_PROC_EXIT = 3,
};

enum af_proc_flags {
	AF_FLAG_ARGV_TRUNCATED = 1 << 0, // argv longer than AF_ARGV_MAX
	AF_FLAG_ARGV_FAULT = 1 << 1, // argv pages not readable at exec
	AF_FLAG_SESSION_INHERITED = 1 << 2, // fork copied a pid_sessions entry
	AF_FLAG_EXE_INHERITED = 1 << 3, // fork copied a proc_exe entry
};

// Common prefix of every event; type selects the full layout.
struct proc_event_hdr {
	__u8 type;
	__u8 _pad0;
	__u16 flags;
	__u32 tgid;
	__u64 ktime; // bpf_ktime_get_boot_ns() when the event was produced
};

struct proc_exec_event {
	struct proc_event_hdr hdr;
	__u32 pid; // tid that called execve (differs from tgid when a thread execs)
	__u32 ppid; // real_parent->tgid
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	__u64 start_time; // group leader start_boottime: with tgid, the process key
	struct exe_id exe;
	__u16 filename_len;
	__u16 interp_len;
	__u16 argv_len;
	__u16 _pad1;
	char filename[AF_FILENAME_MAX];
	char interp[AF_FILENAME_MAX];
	char argv[AF_ARGV_MAX];
};

struct proc_fork_event {
	struct proc_event_hdr hdr; // hdr.tgid is the child
	__u32 parent_tgid;
	__u32 _pad1;
	__u64 start_time; // child
	__u64 parent_start_time;
};

struct proc_exit_event {
	struct proc_event_hdr hdr;
	__u32 exit_code; // wait(2) status encoding: code << 8 | signal
	__u32 _pad1;
	__u64 start_time;
};
