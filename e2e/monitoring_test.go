package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/agentfence/agentfence/deploy/monitoring"
)

// prometheusOwn are the series Prometheus makes itself when it scrapes.
var prometheusOwn = map[string]bool{"up": true}

// kubernetesMetrics are the metrics only a daemon that follows a cluster
// exports: TestKubernetesSession holds them to its daemon.
const kubernetesMetrics = "agentfence_kubernetes_"

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
	names := d.queriedNotExported(t, func(name string) bool { return !strings.HasPrefix(name, kubernetesMetrics) })
	if len(names) < 10 {
		t.Errorf("only %d metrics queried: %v", len(names), names)
	}
}

// queriedNotExported fails for each metric the alerts and dashboard query,
// of those check selects, that d does not export; it returns them all.
func (d *daemon) queriedNotExported(t *testing.T, check func(name string) bool) map[string][]string {
	t.Helper()
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
		family := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			// A histogram's series are its family's.
			if base, ok := strings.CutSuffix(name, suffix); ok && families[base] != nil {
				family = base
			}
		}
		if check(name) && families[family] == nil && !prometheusOwn[name] {
			t.Errorf("%s, queried by %v, is not exported", name, where)
		}
	}
	return names
}
