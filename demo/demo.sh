#!/usr/bin/env bash
# The agentfence demo: start the daemon, run an "agent" in an intent session
# that may reach only its MCP server, and show the allowed call, the blocked
# direct-API bypass and their audit records. Then the same shape with a real
# stdio MCP server the agent launches itself, bound to a session of its own.
# Needs root. Loopback only.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
	echo "demo: needs root (it loads BPF programs): sudo make demo" >&2
	exit 1
fi
BIN=${BIN:-bin}
bin=$(cd "$BIN" && pwd) # a server is declared by absolute path
work=$(mktemp -d /tmp/agentfence-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

sock=$work/api.sock
audit=$work/audit.jsonl
key=sk-demo-4f1c9a # the SaaS key: the MCP server's, and the agent's environment holds it too
api=https://api.saas.demo.internal:18443/v1/tickets

# Stand-ins on loopback: the agent's MCP server, the SaaS API it should only
# reach through that server, and a DNS server that knows both names.
"$BIN/standin" --listen 127.0.0.1:18080 --name "ticket MCP server" \
	--tls-name tickets-mcp.demo.internal --cert-out "$work/mcp.pem" 2>"$work/mcp.log" & pids+=($!)
"$BIN/standin" --listen 127.0.0.2:18443 --name "SaaS tickets API" \
	--tls-name api.saas.demo.internal --cert-out "$work/api.pem" --key "$key" 2>"$work/api.log" & pids+=($!)
"$BIN/standin" --listen 127.0.0.153:53 \
	--dns tickets-mcp.demo.internal=127.0.0.1,api.saas.demo.internal=127.0.0.2 2>"$work/dns.log" & pids+=($!)
# No pinning for the demo: when it ends, the gate is detached.
"$BIN/agentfenced" --api-socket "$sock" --audit-file "$audit" --state-dir "$work/state" \
	--bpffs-path "" --metrics-addr "" 2>"$work/daemon.log" & pids+=($!)

# Wait for the daemon's socket and the stand-ins (bounded).
for _ in $(seq 1 100); do
	[[ -S $sock ]] && grep -q listening "$work/mcp.log" && grep -q listening "$work/api.log" &&
		grep -q listening "$work/dns.log" && break
	sleep 0.1
done
[[ -S $sock ]] || { echo "demo: agentfenced did not start:"; cat "$work/daemon.log"; exit 1; } >&2

echo "== agentfence run: the agent may reach only its MCP server, by name, and the DNS server"
set +e
"$BIN/agentfence" run --socket "$sock" \
	--intent "summarise open tickets for alice@example.com" \
	--origin human:alice@example.com \
	--agent spiffe://example.org/agents/ticket-summariser --agent-name ticket-summariser --agent-version 1.4.2 \
	--allow udp://127.0.0.153:53 --allow tcp://tickets-mcp.demo.internal:18080 \
	-- "$BIN/demo-agent" --dns 127.0.0.153:53 --ca "$work/mcp.pem" \
	--mcp https://tickets-mcp.demo.internal:18080/tools/tickets --api "$api" --api-addr 127.0.0.2:18443
status=$?
set -e
echo "   (agent exit status $status: its direct API calls were refused, by name at DNS, by address at connect)"
# An agent exits non-zero when a call went otherwise than the scene says.
failed=()
((status == 0)) || failed+=("the first scene (agent exit status $status)")
echo
echo "== the two TCP connect records (kernel-attributed, from $audit)"
"$BIN/agentfence" audit show --kind connect --proto tcp "$audit"
echo "== the whole trail, one line per record"
"$BIN/agentfence" audit tail "$audit"
echo

# The second scene: a real stdio MCP server (the official Go SDK), which the
# agent launches itself. The command it runs is the one declared here.
server=("$bin/mcpserver" --api "$api" --dns 127.0.0.153:53 --ca "$work/api.pem")
mark=$(wc -l <"$audit")
echo "== agentfence run --mcp: the agent may reach nothing; the ticket server it launches over stdio may reach the API"
set +e
API_KEY=$key "$BIN/agentfence" run --socket "$sock" \
	--intent "file a ticket for alice@example.com" \
	--origin human:alice@example.com \
	--agent spiffe://example.org/agents/ticket-filer --agent-name ticket-filer --agent-version 2.0.1 \
	--mcp "tickets=$(printf '%q ' "${server[@]}")" --mcp-allow tickets=udp://127.0.0.153:53 \
	--mcp-allow tickets=tcp://api.saas.demo.internal:18443 \
	-- "$BIN/demo-mcpagent" --ca "$work/api.pem" --api "$api" --api-addr 127.0.0.2:18443 -- "${server[@]}"
status=$?
set -e
echo "   (agent exit status $status: its server's call went through its own session; the agent's, with the same key, was refused)"
((status == 0)) || failed+=("the second scene (agent exit status $status)")
echo
# Records reach the file asynchronously; the agent's session's close is last.
for _ in $(seq 1 50); do
	tail -n +$((mark + 1)) "$audit" >"$work/scene2.jsonl"
	grep -q '"intent":"file a ticket.*"event":"closed"' "$work/scene2.jsonl" && break
	sleep 0.1
done
echo "== the launch record: the agent's exec of mcpserver was judged the declared server and bound to its session"
"$BIN/agentfence" audit show --kind mcp "$work/scene2.jsonl"
echo "== this scene's two TCP connects: the server's, allowed, naming mcp.server; the agent's, denied as held_by_mcp_server"
"$BIN/agentfence" audit show --kind connect --proto tcp "$work/scene2.jsonl"
echo "== this scene's trail, one line per record"
"$BIN/agentfence" audit tail "$work/scene2.jsonl"
echo
"$BIN/agentfence" audit verify "$audit"
if ((${#failed[@]})); then
	printf 'demo: FAILED: %s did not go as it says; the records above show what happened\n' "${failed[@]}" >&2
	exit 1
fi
