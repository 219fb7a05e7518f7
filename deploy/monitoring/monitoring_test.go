package monitoring

import (
	"strings"
	"testing"
)

// TestQueries: the alerts pass promtool's checks, every query parses and
// names its metrics, and each alert and panel is there.
func TestQueries(t *testing.T) {
	qs, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	names, err := MetricNames(qs)
	if err != nil {
		t.Fatal(err)
	}
	where := map[string]bool{}
	for _, q := range qs {
		where[q.Where] = true
	}
	for _, w := range []string{"alert AgentfenceKernelEventsLost", "alert AgentfenceAuditRecordsDropped",
		"alert AgentfenceSpoolFilling", "alert AgentfenceQuarantineSpike", "panel Sessions by state",
		"panel Decisions by verdict", "panel Kernel events lost", "variable instance"} {
		if !where[w] {
			t.Errorf("no %s", w)
		}
	}
	for _, n := range []string{"agentfence_sessions", "agentfence_decisions_total", "agentfence_sink_spool_bytes", "up"} {
		if len(names[n]) == 0 {
			t.Errorf("no query names %s: %v", n, names)
		}
	}
}

func TestMetricNamesRefuses(t *testing.T) {
	for _, expr := range []string{`rate(agentfence_decisions_total[5m]`, `{job="agentfence"}`, `sum(rate({__name__=~"agentfence_.*"}[5m]))`} {
		if _, err := MetricNames([]Query{{Where: "test", Expr: expr}}); err == nil || !strings.Contains(err.Error(), "test:") {
			t.Errorf("%s: %v", expr, err)
		}
	}
}
