package enforcer

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type session -type binding -type exe_id -type port_rule -type scope_val -type scope4_key -type scope6_key -type exact4_key -type exact6_key -type gate_event -type name_key -type name_val -type learned_key -type learned_val -type learned_name -type sock_info -type member_sock -type inbound_log -type af_hook -type af_verdict -type af_reason -type af_mode -type af_state -type af_dns_mode -type af_stat -type af_session_flag -type af_rule_flag -type af_rule_none -type af_event_name_flag -type af_name_kind gate ../bpf/gate.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type host_event -type af_host_kind -type host_stat hostname ../bpf/dns.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type bound_task members ../bpf/members.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type af_local_family boundary ../bpf/boundary.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type af_hold -type af_hold_stat podhold ../bpf/podhold.c -- -I../bpf -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
