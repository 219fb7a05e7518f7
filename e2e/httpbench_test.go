package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/api/client"
	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
)

// BenchmarkHTTPRecords: session members make HTTPS calls through OpenSSL
// (Python's http.client, one keep-alive connection each), paced to a total
// rate, and the daemon turns each into an http record in the file sink.
// Reports the rate reached, the daemon's CPU per call above its idle rate
// (daemonCPU) and so the share of a core 1,000 calls a second cost, and
// the calls the trail has no record of, with the tls ring's gap records.
func BenchmarkHTTPRecords(b *testing.B) {
	python, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("python3 is not installed")
	}
	const clients, perClient = 2, 5000
	for _, rate := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("%d_per_s", rate), func(b *testing.B) {
			d := startDaemon(b)
			addr, ca, received := httpsServer(b)
			s, err := client.New(d.socket).Open(context.Background(), v1.OpenRequest{Intent: "calls", Scope: []string{"tcp://" + addr.String()}})
			if err != nil {
				b.Fatal(err)
			}
			cg, err := os.Open(s.Binding.Cgroup)
			if err != nil {
				b.Fatal(err)
			}
			defer cg.Close()
			script := fmt.Sprintf(`import http.client, ssl, time
c = http.client.HTTPSConnection(%q, %d, context=ssl.create_default_context(cafile=%q))
gap = 1e9 / %d
t0 = time.perf_counter_ns()
for i in range(%d):
    due = t0 + i * gap
    while time.perf_counter_ns() < due:
        time.sleep(max(0, (due - time.perf_counter_ns()) / 1e9))
    c.request("POST", "/v1/calls", body=b"x=1", headers={"Authorization": "Bearer b3nch"}); c.getresponse().read()
print(time.perf_counter_ns() - t0)`, addr.Addr().String(), addr.Port(), ca, rate/clients, perClient)
			daemon := &daemonCPU{pid: d.cmd.Process.Pid}
			for b.Loop() {
				before := len(received())
				for range 3 {
					daemon.idleWindow(b)
				}
				var longest time.Duration
				var recs, lost int
				sample := daemon.measure(b, func() {
					cmds := make([]*exec.Cmd, clients)
					outs := make([]*strings.Builder, clients)
					for i := range cmds {
						outs[i] = &strings.Builder{}
						cmds[i] = exec.Command(python, "-c", script)
						cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
						cmds[i].SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
						if err := cmds[i].Start(); err != nil {
							b.Fatal(err)
						}
					}
					for i, cmd := range cmds {
						if err := cmd.Wait(); err != nil {
							b.Fatalf("client: %v\n%s", err, outs[i])
						}
						ns, err := strconv.ParseInt(strings.TrimSpace(outs[i].String()), 10, 64)
						if err != nil {
							b.Fatalf("client printed %q", outs[i])
						}
						longest = max(longest, time.Duration(ns))
					}
					// Every call is a record or part of a gap: wait until
					// they add up (bounded).
					for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
						if recs, lost = httpTrail(b, d.audit, s.ID); recs+lost >= len(received())-before {
							break
						}
					}
				})
				calls := len(received()) - before
				perCall := daemon.perOp([]cpuSample{sample}, calls)
				b.ReportMetric(float64(calls)/longest.Seconds(), "calls/s")
				b.ReportMetric(float64(perCall.Nanoseconds())/1e3, "daemon_cpu_us/call")
				// At 1,000 calls a second, a thousand times that a second.
				b.ReportMetric(float64(perCall.Nanoseconds())/1e4, "daemon_core_%_per_1k_calls/s")
				b.ReportMetric(float64(calls-recs), "unrecorded")
				b.ReportMetric(float64(lost), "tls_ring_lost")
			}
		})
	}
}

// httpTrail counts the session's http records and the tls ring's gaps.
func httpTrail(b *testing.B, path, session string) (recs, lost int) {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range completeLines(data) {
		var r audit.Record
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		switch {
		case r.Kind == audit.KindHTTP && r.Session != nil && r.Session.ID == session:
			recs++
		case r.Kind == audit.KindGap && r.Gap.Source == "kernel_ringbuf:tls":
			lost += int(r.Gap.Count)
		}
	}
	return recs, lost
}
