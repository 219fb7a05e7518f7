package sink

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentfence/agentfence/audit/spool"
)

type metrics struct {
	queued    *prometheus.GaugeVec
	delivered *prometheus.CounterVec
	retried   *prometheus.CounterVec
	dropped   *prometheus.CounterVec
	// File sinks only.
	tornTails     *prometheus.CounterVec
	tornBytes     *prometheus.CounterVec
	replaySkipped *prometheus.CounterVec
	spools        *spoolCollector
}

type sinkMetrics struct {
	queued        prometheus.Gauge
	delivered     prometheus.Counter
	retried       prometheus.Counter
	dropped       prometheus.Counter
	tornTails     prometheus.Counter
	tornBytes     prometheus.Counter
	replaySkipped prometheus.Counter
}

// newMetrics creates the per-sink metrics. The only label is the sink
// name: session or destination labels would make cardinality unbounded.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "agentfence_sink_records_queued",
			Help: "Audit records spooled for the sink and not yet acknowledged.",
		}, []string{"sink"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_records_delivered_total",
			Help: "Audit records the sink acknowledged.",
		}, []string{"sink"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_records_retried_total",
			Help: "Audit records sent again after a failed delivery attempt.",
		}, []string{"sink"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_records_dropped_total",
			Help: "Audit records dropped because the queue or spool was full (reported in gap records).",
		}, []string{"sink"}),
		tornTails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_file_torn_tails_repaired_total",
			Help: "Torn last lines (a write cut short by a crash) cut off the sink's file before appending; their records are delivered again.",
		}, []string{"sink"}),
		tornBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_file_torn_bytes_repaired_total",
			Help: "Bytes of torn last lines cut off the sink's file.",
		}, []string{"sink"}),
		replaySkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentfence_sink_file_redelivered_skipped_total",
			Help: "Records delivered again after a restart that the sink's file already held, not written twice.",
		}, []string{"sink"}),
		spools: &spoolCollector{
			used: prometheus.NewDesc("agentfence_sink_spool_bytes", "Bytes the sink's spool holds on disk.", []string{"sink"}, nil),
			max: prometheus.NewDesc("agentfence_sink_spool_max_bytes",
				"The bound of the sink's spool: past it records are dropped (and reported in gap records).", []string{"sink"}, nil),
			spools: map[string]*spool.Spool{},
		},
	}
	if reg != nil {
		reg.MustRegister(m.queued, m.delivered, m.retried, m.dropped, m.tornTails, m.tornBytes, m.replaySkipped, m.spools)
	}
	return m
}

// spoolCollector reads each sink's spool size when scraped, so that an
// alert can say a spool is filling before records are dropped.
type spoolCollector struct {
	used, max *prometheus.Desc
	mu        sync.Mutex
	spools    map[string]*spool.Spool
}

func (c *spoolCollector) add(name string, s *spool.Spool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spools[name] = s
}

func (c *spoolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.used; ch <- c.max }

func (c *spoolCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	spools := make(map[string]*spool.Spool, len(c.spools))
	for name, s := range c.spools {
		spools[name] = s
	}
	c.mu.Unlock()
	for name, s := range spools {
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(s.Used()), name)
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxBytes()), name)
	}
}

func (m *metrics) forSink(name string) sinkMetrics {
	return sinkMetrics{
		queued:    m.queued.WithLabelValues(name),
		delivered: m.delivered.WithLabelValues(name),
		retried:   m.retried.WithLabelValues(name),
		dropped:   m.dropped.WithLabelValues(name),

		tornTails:     m.tornTails.WithLabelValues(name),
		tornBytes:     m.tornBytes.WithLabelValues(name),
		replaySkipped: m.replaySkipped.WithLabelValues(name),
	}
}
