package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/agentfence/agentfence/internal/privtest"
)

// BenchmarkDNSAnswerFlood: a resolver in a session's scope sends a member
// answers of 16 addresses each for a name the scope allows, paced at 20,000
// addresses a second and flat out. The kernel learns every address and
// writes each to the hostname ring; reports what the trail holds of them as
// records and as gap records (loss in that ring, and in the pipeline).
func BenchmarkDNSAnswerFlood(b *testing.B) {
	const resolver = "127.0.0.155:53"
	const perAnswer = 16
	answer := answerOf(b, "api.e2e.test", perAnswer)
	for _, c := range []struct {
		name    string
		n, rate int // answers, answers per second (0: flat out)
	}{{"flat_out", 10000, 0}, {"20k_addresses_per_s", 10000, 20000 / perAnswer}} {
		b.Run(c.name, func(b *testing.B) {
			d := startDaemon(b)
			pc, err := net.ListenPacket("udp4", resolver)
			if err != nil {
				privtest.Unavailable(b, "listen "+resolver+": "+err.Error())
			}
			defer pc.Close()
			s := d.openSession(b, "--intent", "answers", "--allow", "udp://"+resolver, "--allow", "tcp://api.e2e.test:443")
			to := dnsMember(b, s.Binding.Cgroup, resolver, "api.e2e.test")
			for b.Loop() {
				before := readTrail(b, d.audit)
				start := time.Now()
				for i := range c.n {
					if c.rate > 0 && i%10 == 0 {
						if ahead := time.Duration(i)*time.Second/time.Duration(c.rate) - time.Since(start); ahead > 0 {
							time.Sleep(ahead)
						}
					}
					if _, err := pc.WriteTo(answer, to); err != nil {
						b.Fatal(err)
					}
				}
				sent := c.n * perAnswer
				rate := float64(sent) / time.Since(start).Seconds()
				var t trail
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					if t = readTrail(b, d.audit); t.learned+t.hostLost+t.spoolDropped-before.total() >= sent {
						break
					}
				}
				b.ReportMetric(rate, "addresses/s")
				b.ReportMetric(float64(t.learned-before.learned), "recorded")
				b.ReportMetric(float64(t.hostLost-before.hostLost), "kernel_lost")
				b.ReportMetric(float64(t.spoolDropped-before.spoolDropped), "pipeline_dropped")
				if got := t.learned + t.hostLost + t.spoolDropped - before.total(); got != sent {
					b.Errorf("%d of %d learned addresses accounted for", got, sent)
				}
			}
		})
	}
}

func (t trail) total() int { return t.learned + t.hostLost + t.spoolDropped }
