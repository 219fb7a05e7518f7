package node

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	toolscache "k8s.io/client-go/tools/cache"
)

// Metrics are what an operator watches of a node's sync with the cluster
// (deploy/monitoring: the out-of-sync alert and the sync panels).
type Metrics struct {
	connected       prometheus.Gauge
	requests        *prometheus.CounterVec
	lastEvent       prometheus.Gauge
	watchErrors     prometheus.Counter
	reconcileErrors prometheus.Counter
	enforce         prometheus.Histogram
}

// NewMetrics makes the metrics and registers them with reg (nil: not
// registered, as in tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "agentfence_kubernetes_connected",
			Help: "1 when the API server answered the node's last request (a list, a watch, a report), 0 when it could not be reached; informers retry a lost watch at once, so this falls as soon as it is lost."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentfence_kubernetes_api_requests_total",
			Help: "Requests the node made to the API server (a watch counts once, when it starts), by result: answered or failed."}, []string{"result"}),
		lastEvent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "agentfence_kubernetes_last_event_timestamp_seconds",
			Help: "When the node's informers last delivered a change (Unix time)."}),
		watchErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentfence_kubernetes_watch_errors_total",
			Help: "Lists and watches of the API server that failed; the informers back off and retry."}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentfence_kubernetes_reconcile_errors_total",
			Help: "Reconciles that could not do everything (the log says what); the next one retries."}),
		enforce: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "agentfence_kubernetes_enforce_seconds",
			Help:    "From an AgentSession's creation (or its pod's, if later; second resolution) to its pod bound on this node, for sessions created while the node ran.",
			Buckets: []float64{0.5, 1, 2, 5, 10, 30, 60, 300}}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.requests, m.lastEvent, m.watchErrors, m.reconcileErrors, m.enforce)
	}
	return m
}

func (m *Metrics) event() {
	m.lastEvent.Set(float64(time.Now().UnixNano()) / 1e9)
}

// watchError is the informers' WatchErrorHandler: it counts and logs
// (as client-go's default handler would). A refused connection does not
// reach it (the reflector retries the watch at once); observed sees it.
func (c *Controller) watchError(ctx context.Context, r *toolscache.Reflector, err error) {
	c.metrics.watchErrors.Inc()
	toolscache.DefaultWatchErrorHandler(ctx, r, err)
}

// observed counts the node's requests to the API server and says whether
// the last one was answered.
type observed struct {
	next http.RoundTripper
	m    *Metrics
}

func (o observed) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := o.next.RoundTrip(r)
	if err != nil {
		o.m.requests.WithLabelValues("failed").Inc()
		o.m.connected.Set(0)
	} else {
		o.m.requests.WithLabelValues("answered").Inc()
		o.m.connected.Set(1)
	}
	return resp, err
}
