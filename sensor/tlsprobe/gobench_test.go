//go:build linux

package tlsprobe

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkGoHTTPS: a Go client's HTTPS requests on one keep-alive
// connection, with the Go probes on its executable attached and detached,
// interleaved, run in the session (a member, whose calls are read) and
// outside it (a non-member, who pays the traps and the membership
// lookup). The client times its own request loop; the server is another
// executable, not probed. Reported as ns per request each way, their
// ratio, and the probes' events per request.
func BenchmarkGoHTTPS(b *testing.B) {
	f := newFixture(b)
	f.count = true
	addr, ca := tlsServer(b)
	url := fmt.Sprintf("https://%s/v1/tickets", addr)
	const requests = 400
	bin := goClient(b, "stripped")
	for _, member := range []bool{true, false} {
		name := map[bool]string{true: "member", false: "nonmember"}[member]
		b.Run(name, func(b *testing.B) {
			var on, off time.Duration
			var events int
			for i := 0; i < b.N; i++ {
				for _, attached := range []bool{false, true} {
					if attached {
						if err := f.probes.Attach(bin); err != nil {
							b.Fatal(err)
						}
					} else {
						f.probes.Detach()
					}
					f.take(b)
					f.mu.Lock()
					before := f.seen
					f.mu.Unlock()
					out := f.run(b, member, bin, url, ca, strconv.Itoa(requests))
					ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
					if err != nil {
						b.Fatalf("client printed %q", out)
					}
					f.take(b)
					f.mu.Lock()
					n := f.seen - before
					f.mu.Unlock()
					if attached {
						on += time.Duration(ns)
						events += n
					} else {
						off += time.Duration(ns)
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
