package e2e

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
)

// decisions sums what the connect and sendmsg records of pid to dst stand
// for, and counts those records and the aggregates among them.
func decisions(recs []audit.Record, pid int, dst netip.AddrPort) (records, aggregates int, sum uint64) {
	for _, r := range recs {
		if (r.Kind != audit.KindConnect && r.Kind != audit.KindSendmsg) || r.Process == nil || int(r.Process.PID) != pid ||
			r.Destination == nil || r.Destination.IP != dst.Addr().String() || r.Destination.Port != dst.Port() {
			continue
		}
		records++
		if r.Count > 0 {
			aggregates++
		}
		sum += max(r.Count, 1)
	}
	return records, aggregates, sum
}

// TestAggregatedRepeats: with the default config, a member's 200 allowed
// sends to one destination become its first record and aggregates whose
// counts make up the rest, exactly; its denials are recorded one by one;
// audit verify sums the decisions. With audit.aggregate_window 0, every
// decision is a record.
func TestAggregatedRepeats(t *testing.T) {
	const n = 200
	allowed := netip.MustParseAddrPort("127.0.0.1:9")
	denied := netip.MustParseAddrPort("127.0.0.1:10")
	for _, c := range []struct {
		name   string
		config string
	}{{"default", ""}, {"off", "audit:\n  aggregate_window: 0s\n"}} {
		t.Run(c.name, func(t *testing.T) {
			var args []string
			if c.config != "" {
				args = []string{"--config", configFile(t, c.config)}
			}
			d := startDaemon(t, args...)
			s := d.openSession(t, "--intent", "repeats", "--allow", "udp://"+allowed.String())
			res := kerneltest.Run(t, s.Binding.Cgroup, kerneltest.Options{},
				kerneltest.Flood{Addr: allowed, N: n}, kerneltest.SendUDP{Addr: denied}, kerneltest.SendUDP{Addr: denied})
			if res[0].Outcome() != "ok" || res[1].Outcome() != "EPERM" || res[2].Outcome() != "EPERM" {
				t.Fatalf("flood %s, denied sends %s %s", res[0].Outcome(), res[1].Outcome(), res[2].Outcome())
			}
			pid := res[0].PID
			var recs []audit.Record
			waitFor(t, "records standing for every allowed send", func() bool {
				recs = d.records(t)
				_, _, sum := decisions(recs, pid, allowed)
				return sum >= n
			})
			records, aggregates, sum := decisions(recs, pid, allowed)
			if sum != n {
				t.Fatalf("the records of the allowed sends stand for %d, want %d", sum, n)
			}
			if c.config == "" && (aggregates == 0 || records >= n/2) {
				t.Errorf("%d records (%d aggregates) for %d repeated sends: not aggregated", records, aggregates, n)
			}
			if c.config != "" && (aggregates != 0 || records != n) {
				t.Errorf("aggregation off: %d records (%d aggregates), want %d single ones", records, aggregates, n)
			}
			d.waitRecord(t, "second denial", func(r audit.Record) bool {
				deniedRecs, deniedAggs, deniedSum := decisions([]audit.Record{r}, pid, denied)
				return deniedRecs == 1 && deniedAggs == 0 && deniedSum == 1 && r.Outcome.Verdict == audit.VerdictDenied
			})
			if deniedRecs, deniedAggs, _ := decisions(d.records(t), pid, denied); deniedRecs != 2 || deniedAggs != 0 {
				t.Errorf("%d denial records, %d aggregated: denials are recorded one by one", deniedRecs, deniedAggs)
			}
			for _, r := range recs {
				if r.Count > 0 && (r.Outcome == nil || r.Outcome.Verdict != audit.VerdictAllowed || r.Session == nil ||
					r.Session.ID != s.ID || r.Outcome.Rule != "udp://"+allowed.String() || r.FirstTime == nil || r.LastTime == nil) {
					t.Errorf("aggregate %+v", r)
				}
			}
			out, err := exec.Command(filepath.Join(d.bin, "agentfence"), "audit", "verify", d.audit).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "decisions") {
				t.Errorf("audit verify: %v: %s", err, out)
			}
		})
	}
}
