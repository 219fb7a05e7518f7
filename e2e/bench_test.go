package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*99/100]
}

// BenchmarkSessionOpen: open-to-enforced latency. The kernel maps are
// written before the API call returns, so the latency is the round trip of
// the open call; one probe per 100 sessions checks that the new scope is
// already decided by the kernel when the call returns.
func BenchmarkSessionOpen(b *testing.B) {
	d := startDaemon(b)
	c := client.New(d.socket)
	ln := kerneltest.Listen(b, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(b, "tcp4", "127.0.0.1:0")
	var lat []time.Duration
	for b.Loop() {
		lat = lat[:0]
		var ids []string
		for i := range 1000 {
			start := time.Now()
			s, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench", Scope: []string{"tcp://" + ln.String()}})
			lat = append(lat, time.Since(start))
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, s.ID)
			if i%100 == 0 {
				res := kerneltest.Run(b, s.Binding.Cgroup, kerneltest.Options{}, kerneltest.Connect{Addr: ln}, kerneltest.Connect{Addr: other})
				if res[0].Outcome() != "ok" || res[1].Outcome() != "EPERM" {
					b.Fatalf("session %s not enforced on return: %+v", s.ID, res)
				}
			}
		}
		b.StopTimer()
		for _, id := range ids {
			c.Close(context.Background(), id)
		}
		b.StartTimer()
	}
	p50, p99 := percentiles(lat)
	b.ReportMetric(float64(p50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99_µs")
}

// BenchmarkRevokeDestroy: revoke-to-connections-destroyed with 100 open
// connections. The peer holds the server end of each connection in one
// epoll set, watched by one thread; a connection counts as destroyed when
// its end reports the RST (the read fails with ECONNRESET), so the figure
// (p50/p99_µs) runs from the revoke call to the last of the 100 resets, as
// the peer observes them. api_p50/p99_µs is the revoke call's round trip,
// which also writes the 100 destroy records. Before each revoke the
// benchmark waits for the 100 connect records of its own setup, so that the
// figure is the revoke's and not the daemon still recording the setup.
func BenchmarkRevokeDestroy(b *testing.B) {
	d := startDaemon(b)
	c := client.New(d.socket)
	lfd, addr := rawListen(b)
	defer unix.Close(lfd)
	// The sessions of the connect records in the trail, as the daemon
	// writes them.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connects := make(chan string, 1<<16)
	go audit.Follow(ctx, d.audit, 5*time.Millisecond, func(line []byte) bool {
		// Only connect records are decoded: the follower shares the two
		// vCPUs with the revoke being measured.
		if !bytes.Contains(line, []byte(`"kind":"connect"`)) {
			return true
		}
		var r audit.Record
		if json.Unmarshal(line, &r) == nil && r.Kind == audit.KindConnect && r.Session != nil {
			connects <- r.Session.ID
		}
		return true
	})
	var lat, apiLat []time.Duration
	for b.Loop() {
		b.StopTimer()
		s, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench", Scope: []string{"tcp://" + addr.String()}})
		if err != nil {
			b.Fatal(err)
		}
		p := kerneltest.Start(b, s.Binding.Cgroup, kerneltest.Options{}, false, kerneltest.HoldMany{Addr: addr, N: 100})
		if res := p.Next(); res.Outcome() != kerneltest.OK {
			b.Fatalf("holdmany: %s", res)
		}
		timeout := time.After(10 * time.Second)
		for n := 0; n < 100; {
			select {
			case id := <-connects:
				if id == s.ID {
					n++
				}
			case <-timeout:
				b.Fatalf("%d of the setup's connect records in the audit trail after 10s", n)
			}
		}
		w := watchResets(b, lfd, 100)
		b.StartTimer()
		start := time.Now()
		if _, err := c.Revoke(context.Background(), s.ID); err != nil {
			b.Fatal(err)
		}
		apiLat = append(apiLat, time.Since(start))
		b.StopTimer()
		last, err := w.wait()
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, last.Sub(start))
		if res := p.Next(); res.Outcome() != kerneltest.OK || res.N != 100 {
			b.Fatalf("after revoke: %s, %d broken", res, res.N)
		}
		c.Close(context.Background(), s.ID)
		b.StartTimer()
	}
	p50, p99 := percentiles(lat)
	b.ReportMetric(float64(p50.Microseconds()), "p50_µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99_µs")
	p50, p99 = percentiles(apiLat)
	b.ReportMetric(float64(p50.Microseconds()), "api_p50_µs")
	b.ReportMetric(float64(p99.Microseconds()), "api_p99_µs")
}

// rawListen listens on a loopback port with a plain socket, so that the
// accepted connections stay out of the Go netpoller.
func rawListen(b *testing.B) (int, netip.AddrPort) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(fd, 256); err != nil {
		b.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	return fd, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
}

// resetWatch is one thread blocked in epoll_wait on the server ends of n
// connections, noting when the last of them is reset.
type resetWatch struct {
	done chan struct{}
	last time.Time
	err  error
}

// watchResets accepts n connections (already queued on lfd) and watches
// them from a thread of their own until each has been reset.
func watchResets(b *testing.B, lfd, n int) *resetWatch {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		b.Fatal(err)
	}
	for range n {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if err != nil {
			b.Fatal(err)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			b.Fatal(err)
		}
	}
	w := &resetWatch{done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer close(w.done)
		defer unix.Close(ep)
		events := make([]unix.EpollEvent, n)
		for left := n; left > 0; {
			k, err := unix.EpollWait(ep, events, 10_000)
			now := time.Now()
			if err == unix.EINTR {
				continue
			}
			if err != nil || k == 0 {
				w.err = fmt.Errorf("%d connections not reset within 10s: %v", left, err)
				return
			}
			for _, ev := range events[:k] {
				fd := int(ev.Fd)
				if _, _, err := unix.Recvfrom(fd, make([]byte, 1), unix.MSG_DONTWAIT); err != unix.ECONNRESET {
					w.err = fmt.Errorf("peer read after revoke: %v, want ECONNRESET", err)
					return
				}
				unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
				unix.Close(fd)
				w.last = now
				left--
			}
		}
	}()
	return w
}

// wait returns when the last connection was reset.
func (w *resetWatch) wait() (time.Time, error) {
	<-w.done
	return w.last, w.err
}

// BenchmarkDaemonMemory10kSessions: the daemon's RSS with 10,000 open
// sessions.
func BenchmarkDaemonMemory10kSessions(b *testing.B) {
	d := startDaemon(b, "--config", configFile(b, "sessions:\n  max_sessions: 12000\n"))
	c := client.New(d.socket)
	for b.Loop() {
		var ids []string
		for i := range 10000 {
			s, err := c.Open(context.Background(), v1.OpenRequest{Intent: "bench",
				Scope: []string{fmt.Sprintf("tcp://10.%d.%d.0/24:443", i>>8, i&0xff), "udp://127.0.0.53:53"}})
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, s.ID)
		}
		b.ReportMetric(float64(memory(b, d.cmd.Process.Pid, "VmRSS"))/(1<<20), "rss_MiB")
		b.StopTimer()
		for _, id := range ids {
			c.Close(context.Background(), id)
		}
		b.StartTimer()
	}
}

// BenchmarkEndToEnd: a session member sends datagrams, flat out and paced
// at 20,000/s; with aggregation off every decision becomes a record in the
// file sink. Reports the rate the member reached, the records written per
// second end to end, and what was lost in the gate's ring buffer and in the
// pipeline (its in-memory queue and the spool), all reported in the trail
// as gap records.
func BenchmarkEndToEnd(b *testing.B) {
	for _, c := range []struct {
		name    string
		n, rate int
	}{{"flat_out", 200000, 0}, {"20k_per_s", 100000, 20000}} {
		b.Run(c.name, func(b *testing.B) {
			d := startDaemon(b, "--config", configFile(b, "audit:\n  aggregate_window: 0s\n"))
			cl := client.New(d.socket)
			s, err := cl.Open(context.Background(), v1.OpenRequest{Intent: "flood", Scope: []string{"udp://127.0.0.1:9"}})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				start := time.Now()
				res := kerneltest.Run(b, s.Binding.Cgroup, kerneltest.Options{}, kerneltest.Flood{Addr: netip.MustParseAddrPort("127.0.0.1:9"), N: c.n, Rate: c.rate})
				if res[0].Err != kerneltest.OK {
					b.Fatalf("flood: %s", res[0])
				}
				sends := res[0].Rate
				// Every send is a record or part of a gap; wait until they
				// add up (bounded), then count.
				var t trail
				for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					if t = readTrail(b, d.audit); t.sendmsg+t.kernelLost+t.spoolDropped >= c.n {
						break
					}
				}
				b.ReportMetric(sends, "sends/s")
				b.ReportMetric(float64(t.sendmsg)/t.last.Sub(start).Seconds(), "records/s")
				b.ReportMetric(float64(t.kernelLost), "kernel_lost")
				b.ReportMetric(float64(t.spoolDropped), "pipeline_dropped")
				b.ReportMetric(float64(c.n-t.sendmsg-t.kernelLost-t.spoolDropped), "unaccounted")
			}
		})
	}
}

// trail sums up an audit file and its rotations.
type trail struct {
	sendmsg, kernelLost, spoolDropped int
	learned, hostLost                 int // DNS answers learned, lost in the hostname ring
	// decisions and decisionBytes are the connect and sendmsg records and
	// their size in the file (with the newline).
	decisions, decisionBytes int
	last                     time.Time
}

func readTrail(b *testing.B, path string) trail {
	var t trail
	files, _ := filepath.Glob(path + ".*")
	for _, f := range append(files, path) {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			var r audit.Record
			if json.Unmarshal([]byte(line), &r) != nil {
				continue
			}
			if r.Kind == audit.KindConnect || r.Kind == audit.KindSendmsg {
				t.decisions++
				t.decisionBytes += len(line) + 1
			}
			switch {
			case r.Kind == audit.KindDNS && r.Outcome != nil && r.Outcome.Reason == "learned":
				t.learned++
			case r.Kind == audit.KindGap && r.Gap.Source == "kernel_ringbuf:hostname":
				t.hostLost += int(r.Gap.Count)
			case r.Kind == audit.KindSendmsg:
				t.sendmsg += int(max(r.Count, 1)) // an aggregate of repeats stands for count
			case r.Kind == audit.KindGap && r.Gap.Source == "kernel_ringbuf:gate":
				t.kernelLost += int(r.Gap.Count)
			case r.Kind == audit.KindGap && (strings.HasPrefix(r.Gap.Source, "spool:") || r.Gap.Source == "queue"):
				t.spoolDropped += int(r.Gap.Count)
			}
		}
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(t.last) {
			t.last = fi.ModTime()
		}
	}
	return t
}

// memory reads one of a process's memory figures in /proc/PID/status
// (VmRSS: resident now, VmHWM: the most it has had), in bytes.
func memory(b *testing.B, pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
