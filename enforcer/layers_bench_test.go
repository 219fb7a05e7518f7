package enforcer

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/scope"
)

// setInbound attaches or detaches the inbound programs (bind4, bind6 and
// the root's ingress), as the build before them ran without them.
func (g *Gate) setInbound(root string, on bool) error {
	for i, a := range g.attachments() {
		if a.name != "bind4" && a.name != "bind6" && a.name != "ingress" {
			continue
		}
		if !on {
			release(g.links[i])
			continue
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: a.typ, Program: a.prog})
		if err != nil {
			return err
		}
		g.links[i] = l
	}
	return nil
}

// setFamilies attaches or detaches the socket family program on every
// system call's exit (the last link attachFamilies keeps).
func (g *Gate) setFamilies(on bool) error {
	last := len(g.fam.links) - 1
	if !on {
		return release(g.fam.links[last])
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_exit", Program: g.fam.coll.Programs[boundaryProgAfSysExit]})
	if err != nil {
		return err
	}
	g.fam.links[last] = l
	return nil
}

// BenchmarkBoundaryLayers measures what the layers that hold the session
// boundary against a hostile member add to the common path, side by side
// with the build before them in one run: (prev) the gate without them,
// (in) with the inbound programs (bind hooks, the root's ingress program
// and the socket mark at creation), (fam) with the socket family program
// on every system call's exit, (all) with both. Each workload runs in an
// agent process of its own, as a member (in a session with 10 rules) and
// as a non-member: connect+close to a loopback listener, a UDP round trip
// to a loopback echo (the reply is judged on the way in), getppid (the
// price of a program on every system call's exit) and fork+exec+wait of
// /bin/true. Each iteration runs one batch of every workload in every
// configuration, rotating the order, and the medians are compared.
func BenchmarkBoundaryLayers(b *testing.B) {
	g, root := rootGate(b, Options{Boundary: FamiliesSyscallExit})
	if g.fam == nil {
		b.Skip("no socket family program on this kernel")
	}
	tcp := kerneltest.Serve(b, "127.0.0.1:0")
	udp := kerneltest.ServeUDP(b, "127.0.0.1:0")
	var rules []scope.Rule
	for _, text := range []string{"tcp://" + tcp.String(), "udp://" + udp.String()} {
		r, _ := scope.Parse(text)
		rules = append(rules, r)
	}
	for i := range 8 {
		r, _ := scope.Parse(fmt.Sprintf("tcp://192.168.%d.0/24:443", i))
		rules = append(rules, r)
	}
	entries, err := scope.Compile(rules)
	if err != nil {
		b.Fatal(err)
	}
	const slot = 77
	if err := g.WriteScope(slot, 1, entries); err != nil {
		b.Fatal(err)
	}
	if err := g.PutSession(slot, SessionState{Gen: 1, State: StateActive}); err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(root, "agentfence-bench-layers")
	member, plain := filepath.Join(base, "member"), filepath.Join(base, "plain")
	for _, d := range []string{member, plain} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	// Registered before the agents start, so it runs after they are gone.
	b.Cleanup(func() { os.Remove(member); os.Remove(plain); os.Remove(base) })
	id, _ := cgroupv2.ID(member)
	if err := g.BindCgroup(id, slot, 1); err != nil {
		b.Fatal(err)
	}

	type agent struct {
		name string
		p    *kerneltest.Proc
	}
	var agents []agent
	for _, w := range []struct {
		name string
		op   kerneltest.Op
	}{
		{"connect", kerneltest.ConnectBench{Addr: tcp, N: 500}},
		{"udp", kerneltest.UDPBench{Addr: udp, N: 500}},
		{"getppid", kerneltest.SyscallBench{N: 100000}},
		{"exec", kerneltest.ExecBench{N: 20}},
	} {
		for _, cg := range []struct{ who, path string }{{"member", member}, {"other", plain}} {
			agents = append(agents, agent{w.name + "_" + cg.who, kerneltest.Start(b, cg.path, kerneltest.Options{}, false, w.op)})
		}
	}
	batch := func(p *kerneltest.Proc) time.Duration {
		p.Go()
		res := p.Next()
		if res.Err != kerneltest.OK {
			b.Fatalf("agent: %s", res)
		}
		return res.Wall
	}
	configs := []struct {
		name          string
		inbound, fams bool
	}{{"prev", false, false}, {"in", true, false}, {"fam", false, true}, {"all", true, true}}
	inbound, fams := true, true // as Load left them
	samples := make([][][]time.Duration, len(configs))
	for i := range samples {
		samples[i] = make([][]time.Duration, len(agents))
	}
	round := 0
	for b.Loop() {
		for k := range configs {
			i := (k + round) % len(configs)
			c := configs[i]
			if c.inbound != inbound {
				if err := g.setInbound(root, c.inbound); err != nil {
					b.Fatal(err)
				}
				inbound = c.inbound
			}
			if c.fams != fams {
				if err := g.setFamilies(c.fams); err != nil {
					b.Fatal(err)
				}
				fams = c.fams
			}
			for j, a := range agents {
				samples[i][j] = append(samples[i][j], batch(a.p))
			}
		}
		round++
	}
	// Close releases every link: leave none released twice.
	if !inbound {
		if err := g.setInbound(root, true); err != nil {
			b.Fatal(err)
		}
	}
	if !fams {
		if err := g.setFamilies(true); err != nil {
			b.Fatal(err)
		}
	}
	for j, a := range agents {
		prev := median(samples[0][j])
		b.ReportMetric(float64(prev.Nanoseconds()), a.name+"_prev_ns")
		for i := 1; i < len(configs); i++ {
			b.ReportMetric(float64(median(samples[i][j]))/float64(prev), a.name+"_"+configs[i].name+"/prev")
		}
	}
}
