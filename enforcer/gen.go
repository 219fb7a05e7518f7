package enforcer

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type session -type binding -type exe_id -type port_rule -type scope_val -type scope4_key -type scope6_key -type gate_event gate ../bpf/gate.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
