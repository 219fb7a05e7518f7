// Package sensor loads the process-identity BPF programs and decodes their
// events.
package sensor

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type proc_event_hdr -type proc_exec_event -type proc_fork_event -type proc_exit_event -type af_proc_event_type -type af_proc_flags -type af_escape_kind -type af_ptrace_how -type af_netns_via -type af_proc_hook -type exe_id -type binding process ../bpf/process.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
