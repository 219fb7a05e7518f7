package sockdestroy

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type member_sock sockiter ../../bpf/sockiter.c -- -I../../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
