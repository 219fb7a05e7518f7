//go:build linux

package tlsprobe

import (
	"debug/elf"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
)

// BenchmarkHTTPS: a member's requests on one keep-alive HTTPS connection,
// with the probes attached and detached, interleaved. The clients time
// their own request loop (python) or the whole run (curl, whose start is
// the same both ways), so that what differs is the probes' cost. Reported
// as ns per request each way and their ratio; "events" counts the probes'
// events per request (a request and its response: two or more).
func BenchmarkHTTPS(b *testing.B) {
	f := newFixture(b)
	f.count = true
	addr, ca := tlsServer(b)
	url := fmt.Sprintf("https://%s/v1/tickets", addr)
	const requests = 400
	python := fmt.Sprintf(`import http.client, ssl, time
c = http.client.HTTPSConnection(%q, %d, context=ssl.create_default_context(cafile=%q))
c.request("GET", "/v1/warmup"); c.getresponse().read()
t = time.perf_counter_ns()
for i in range(%d):
    c.request("POST", "/v1/tickets", body=b"x=1", headers={"Authorization": "Bearer b3nch"}); c.getresponse().read()
print(time.perf_counter_ns() - t)`, addr.Addr().String(), addr.Port(), ca, requests)
	curlArgs := []string{"-sS", "--http1.1", "--cacert", ca, "-H", "Authorization: Bearer b3nch", "-o", "/dev/null"}
	for range requests {
		curlArgs = append(curlArgs, url)
	}
	clients := map[string]func() time.Duration{
		"python": func() time.Duration {
			out := f.run(b, true, needClient(b, "python3"), "-c", python)
			ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
			if err != nil {
				b.Fatalf("python printed %q", out)
			}
			return time.Duration(ns)
		},
		"curl": func() time.Duration {
			start := time.Now()
			f.run(b, true, needClient(b, "curl"), curlArgs...)
			return time.Since(start)
		},
	}
	for name, client := range clients {
		b.Run(name, func(b *testing.B) {
			var on, off time.Duration
			var events int
			for i := 0; i < b.N; i++ {
				for _, attached := range []bool{false, true} {
					if attached {
						for _, lib := range Libraries() {
							if err := f.probes.Attach(lib); err != nil {
								b.Fatal(err)
							}
						}
					} else {
						f.probes.Detach()
					}
					f.take(b)
					f.mu.Lock()
					before := f.seen
					f.mu.Unlock()
					took := client()
					f.take(b)
					f.mu.Lock()
					n := f.seen - before
					f.mu.Unlock()
					if attached {
						on += took
						events += n
					} else {
						off += took
						if n != 0 {
							b.Errorf("%d events with the probes detached", n)
						}
					}
				}
			}
			per := float64(b.N * requests)
			b.ReportMetric(float64(off.Nanoseconds())/per, "ns/req-detached")
			b.ReportMetric(float64(on.Nanoseconds())/per, "ns/req-attached")
			b.ReportMetric(float64(on)/float64(off), "ratio")
			b.ReportMetric(float64(events)/per, "events/req")
		})
	}
}

// BenchmarkNonMember: what a process outside every session pays while the
// probes are attached: the raw sys_enter program runs for every system
// call on the host (one hash lookup), next to the same loop with them
// detached.
func BenchmarkNonMember(b *testing.B) {
	f := newFixture(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	sa := &syscall.SockaddrInet4{Port: ln.Addr().(*net.TCPAddr).Port, Addr: [4]byte{127, 0, 0, 1}}
	ops := map[string]func(){
		"getppid": func() { syscall.Getppid() },
		"connect": func() {
			fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
			if err != nil {
				b.Fatal(err)
			}
			if err := syscall.Connect(fd, sa); err != nil {
				b.Fatal(err)
			}
			syscall.Close(fd)
		},
	}
	for name, op := range ops {
		b.Run(name, func(b *testing.B) {
			const batch = 2000
			var on, off time.Duration
			for i := 0; i < b.N; i++ {
				for _, attached := range []bool{false, true} {
					if attached {
						for _, lib := range Libraries() {
							if err := f.probes.Attach(lib); err != nil {
								b.Fatal(err)
							}
						}
					} else {
						f.probes.Detach()
					}
					start := time.Now()
					for range batch {
						op()
					}
					if attached {
						on += time.Since(start)
					} else {
						off += time.Since(start)
					}
				}
			}
			per := float64(b.N * batch)
			b.ReportMetric(float64(off.Nanoseconds())/per, "ns/op-detached")
			b.ReportMetric(float64(on.Nanoseconds())/per, "ns/op-attached")
			b.ReportMetric(float64(on)/float64(off), "ratio")
		})
	}
}

//go:noinline
func trapTarget(x int) int { return x + 1 }

// BenchmarkUprobeTrap: what one uprobe hit costs a process outside every
// session on this machine, apart from any TLS library: a Go function of
// this binary called in a loop, with the SSL_free program (a membership
// lookup, then nothing for a non-member) attached at its entry and
// detached, interleaved. The difference is the trap's price, which every
// probed call pays twice (entry and return) for OpenSSL, and once or more
// for Go.
func BenchmarkUprobeTrap(b *testing.B) {
	f := newFixture(b)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	ex, err := link.OpenExecutable(self)
	if err != nil {
		b.Fatal(err)
	}
	// The test binary has no symbol table: the function's file offset
	// from its address (not position-independent).
	ef, err := elf.Open(self)
	if err != nil {
		b.Fatal(err)
	}
	addr, err := fileOffset(ef, uint64(reflect.ValueOf(trapTarget).Pointer()))
	ef.Close()
	if err != nil {
		b.Fatal(err)
	}
	const batch = 20000
	var on, off time.Duration
	sum := 0
	for i := 0; i < b.N; i++ {
		for _, attached := range []bool{false, true} {
			var l link.Link
			if attached {
				if l, err = ex.Uprobe("", f.probes.objs.AfSslFree, &link.UprobeOptions{Address: addr}); err != nil {
					b.Fatal(err)
				}
			}
			start := time.Now()
			for j := range batch {
				sum += trapTarget(j)
			}
			if attached {
				on += time.Since(start)
				l.Close()
			} else {
				off += time.Since(start)
			}
		}
	}
	per := float64(b.N * batch)
	b.ReportMetric(float64(off.Nanoseconds())/per, "ns/call-detached")
	b.ReportMetric(float64(on.Nanoseconds())/per, "ns/call-attached")
	b.ReportMetric(float64((on-off).Nanoseconds())/per, "ns/trap")
	if sum == 0 {
		b.Fatal("the loop did nothing")
	}
}
