// Package tlsprobe attaches uprobes to the TLS libraries session members
// use (OpenSSL, and Go's crypto/tls inside Go executables) and hands user
// space the plaintext of their connections, call by call (bpf/tls.c,
// bpf/tls_go.h).
package tlsprobe

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type tls_event -type af_tls_op -type af_tls_watched -type go_exe -type go_offsets tls ../../bpf/tls.c -- -I../../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
