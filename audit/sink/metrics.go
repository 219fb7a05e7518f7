package sink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	queued    *prometheus.GaugeVec
	delivered *prometheus.CounterVec
	retried   *prometheus.CounterVec
	dropped   *prometheus.CounterVec
	// File sinks only.
	tornTails     *prometheus.CounterVec
	tornBytes     *prometheus.CounterVec
	replaySkipped *prometheus.CounterVec
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
	}
	if reg != nil {
		reg.MustRegister(m.queued, m.delivered, m.retried, m.dropped, m.tornTails, m.tornBytes, m.replaySkipped)
	}
	return m
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
