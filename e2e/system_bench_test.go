package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// BenchmarkWholeSystem is what a user pays (issue 17): a member's TCP
// connect loop (connect, close with a reset) and UDP loop (sendto and the
// echo's reply) with the real daemon recording every decision in its file
// sink, side by side with the same loops in a cgroup outside every session
// (no enforcement; the daemon is idle meanwhile) and in a cgroup an
// nftables `socket cgroupv2` rule set confines, the reference that records
// nothing. One batch of each per round, the order rotating.
//
// Reports per loop: wall-clock and thread-CPU time per operation and their
// ratios to no enforcement, the daemon's CPU per decision above its idle
// rate (daemonCPU), records per operation and what the trail reports lost.
//
// Two configurations, each in its own run against its own baselines: the
// default (repeats aggregated, audit.aggregate_window 1s) and one record per
// decision (0s).
func BenchmarkWholeSystem(b *testing.B) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		b.Skip("nft is not installed (Debian: nftables)")
	}
	for _, c := range []struct{ name, config string }{
		{"aggregated", ""},
		{"every_decision", "audit:\n  aggregate_window: 0s\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var args []string
			if c.config != "" {
				args = []string{"--config", configFile(b, c.config)}
			}
			wholeSystem(b, nft, startDaemon(b, args...))
		})
	}
}

func wholeSystem(b *testing.B, nft string, d *daemon) {
	tcp := kerneltest.Serve(b, "127.0.0.1:0")
	udp := kerneltest.ServeUDP(b, "127.0.0.1:0")
	s, err := client.New(d.socket).Open(context.Background(), v1.OpenRequest{Intent: "bench whole system",
		Scope: []string{"tcp://" + tcp.String(), "udp://" + udp.String()}})
	if err != nil {
		b.Fatal(err)
	}
	root, err := cgroupv2.Root()
	if err != nil {
		b.Fatal(err)
	}
	none := benchCgroup(b, root, "none")
	confined := benchCgroup(b, root, "nft")
	nftConfine(b, nft, root, confined, tcp.Port(), udp.Port())
	// The reference confines for real: a datagram to another port is
	// refused (a TCP SYN would only be dropped, and retried).
	other := netip.AddrPortFrom(udp.Addr(), udp.Port()+1)
	if res := kerneltest.Run(b, confined, kerneltest.Options{}, kerneltest.SendUDP{Addr: other}); res[0].Err != "EPERM" {
		b.Fatalf("send to %s under the nftables rule set: %s, want EPERM", other, res[0])
	}
	trail := followTrail(b, d.audit)

	const tcpN, udpN = 1000, 2000
	var probes []*benchProbe
	for _, where := range []struct{ name, cgroup string }{{"agentfence", s.Binding.Cgroup}, {"none", none}, {"nft", confined}} {
		for _, op := range []struct {
			name string
			op   kerneltest.Op
			n    int
		}{{"tcp", kerneltest.ConnectBench{Addr: tcp, N: tcpN}, tcpN}, {"udp", kerneltest.UDPBench{Addr: udp, N: udpN}, udpN}} {
			p := kerneltest.Start(b, where.cgroup, kerneltest.Options{}, false, op.op)
			probes = append(probes, &benchProbe{name: op.name + "_" + where.name, p: p, n: op.n})
		}
	}
	kinds := map[string]string{"tcp": audit.KindConnect, "udp": audit.KindSendmsg}
	daemon := &daemonCPU{pid: d.cmd.Process.Pid}
	runRounds(b, probes, daemon, func(pr *benchProbe) {
		if loop, where, _ := strings.Cut(pr.name, "_"); where == "agentfence" {
			trail.await(b, false, kinds[loop], uint32(pr.p.PID), pr.done)
		}
	})
	byName := map[string]*benchProbe{}
	for _, pr := range probes {
		byName[pr.name] = pr
	}
	lost := readTrail(b, d.audit)
	b.ReportMetric(float64(lost.kernelLost+lost.spoolDropped), "lost")
	b.ReportMetric(100*daemon.idleRate(), "daemon_idle_cpu_%")
	if lost.decisions > 0 {
		b.ReportMetric(float64(lost.decisionBytes)/float64(lost.decisions), "bytes/record")
	}
	for _, loop := range []string{"tcp", "udp"} {
		base := byName[loop+"_none"]
		baseWall, _ := percentiles(base.wall)
		baseCPU, _ := percentiles(base.cpu)
		b.ReportMetric(float64(baseWall.Nanoseconds()), loop+"_none_ns/op")
		for _, where := range []string{"agentfence", "nft"} {
			pr := byName[loop+"_"+where]
			wall, _ := percentiles(pr.wall)
			cpu, _ := percentiles(pr.cpu)
			b.ReportMetric(float64(wall)/float64(baseWall), loop+"_"+where+"/none")
			b.ReportMetric(float64(cpu)/float64(baseCPU), loop+"_"+where+"/none_cpu")
		}
		pr := byName[loop+"_agentfence"]
		b.ReportMetric(float64(daemon.perOp(pr.daemon, pr.n).Nanoseconds())/1e3, loop+"_daemon_cpu_us/decision")
		recorded := trail.count(false, kinds[loop], uint32(pr.p.PID))
		b.ReportMetric(float64(trail.recordsOf(kinds[loop], uint32(pr.p.PID)))/float64(pr.done), loop+"_records/op")
		b.ReportMetric(float64(recorded)/float64(pr.done), loop+"_decisions_recorded/op")
		if recorded != pr.done {
			b.Errorf("%s: the records stand for %d of %d decisions", pr.name, recorded, pr.done)
		}
	}
}

// benchCgroup makes a cgroup outside every session, removed at cleanup
// (after the probes in it have exited: cleanups run last in, first out).
func benchCgroup(b *testing.B, root, name string) string {
	b.Helper()
	dir := filepath.Join(root, fmt.Sprintf("afbench-%d-%s", os.Getpid(), name))
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.Remove(dir) })
	return dir
}

// nftConfine lets the processes of cgroup reach only the two loopback
// ports: the rule set a user of nftables alone would write.
func nftConfine(b *testing.B, nft, root, cgroup string, tcpPort, udpPort uint16) {
	b.Helper()
	// nft finds the cgroup by its path under /sys/fs/cgroup, which is the
	// cgroup2 root only on a unified host (a hybrid one mounts it at
	// /sys/fs/cgroup/unified); the level counts from the cgroup2 root.
	level := strings.Count(strings.TrimPrefix(cgroup, root+"/"), "/") + 1
	rel := strings.TrimPrefix(cgroup, "/sys/fs/cgroup/")
	table := fmt.Sprintf("afbench_%d", os.Getpid())
	rules := fmt.Sprintf(`table inet %[1]s {
	chain out {
		type filter hook output priority 0; policy accept;
		socket cgroupv2 level %[2]d %[3]q ip daddr 127.0.0.1 tcp dport %[4]d accept
		socket cgroupv2 level %[2]d %[3]q ip daddr 127.0.0.1 udp dport %[5]d accept
		socket cgroupv2 level %[2]d %[3]q drop
	}
}
`, table, level, rel, tcpPort, udpPort)
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("nft: %v\n%s\n%s", err, out, rules)
	}
	b.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", table).Run() })
}
