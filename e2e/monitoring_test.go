package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/agentfence/agentfence/deploy/monitoring"
)

// prometheusOwn are the series Prometheus makes itself when it scrapes.
var prometheusOwn = map[string]bool{"up": true}

// TestMonitoringQueriesExportedMetrics: every metric the shipped alerts and
// dashboard query is one a running agentfenced exports, so a renamed
// metric cannot leave an alert that never fires.
func TestMonitoringQueriesExportedMetrics(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agentfence.yaml")
	// One sink, so that the per-sink series exist.
	conf := "audit:\n  sinks:\n    - name: archive\n      type: file\n      file:\n        path: " + filepath.Join(dir, "archive.jsonl") + "\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--config", cfg)
	resp, err := http.Get(d.metricsBase(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := monitoring.Queries()
	if err != nil {
		t.Fatal(err)
	}
	names, err := monitoring.MetricNames(qs)
	if err != nil {
		t.Fatal(err)
	}
	for name, where := range names {
		if families[name] == nil && !prometheusOwn[name] {
			t.Errorf("%s, queried by %v, is not exported", name, where)
		}
	}
	if len(names) < 10 {
		t.Errorf("only %d metrics queried: %v", len(names), names)
	}
}
