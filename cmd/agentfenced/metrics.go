package main

import (
	"errors"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/session"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
)

// collector reads the kernel's counters and the daemon's state at scrape
// time. Labels are bounded sets (verdict, source, map): never a pid or a
// session id.
type collector struct {
	gate     *enforcer.Gate
	sessions *session.Registry
	procs    *processes
	tls      *tlsCalls

	decisions, lost, active, cached, violations, entries, capacity, build, probed, conns, holds *prometheus.Desc
}

func newCollector(gate *enforcer.Gate, sessions *session.Registry, procs *processes, tls *tlsCalls) *collector {
	return &collector{gate: gate, sessions: sessions, procs: procs, tls: tls,
		probed:     prometheus.NewDesc("agentfence_tls_probed_files", "Files whose OpenSSL the TLS probes are attached to (0 while no session is open).", nil, nil),
		conns:      prometheus.NewDesc("agentfence_tls_connections", "Members' TLS connections followed for http records.", nil, nil),
		decisions:  prometheus.NewDesc("agentfence_decisions_total", "Gate decisions about session members, by verdict.", []string{"verdict"}, nil),
		lost:       prometheus.NewDesc("agentfence_kernel_events_lost_total", "Kernel events dropped because a ring buffer was full.", []string{"source"}, nil),
		active:     prometheus.NewDesc("agentfence_sessions", "Open sessions, by state.", []string{"state"}, nil),
		cached:     prometheus.NewDesc("agentfence_processes_cached", "Processes in the process cache.", nil, nil),
		violations: prometheus.NewDesc("agentfence_violations_total", "Out-of-scope attempts by session members (denied or would-deny).", nil, nil),
		entries:    prometheus.NewDesc("agentfence_bpf_map_entries", "Entries in a BPF map.", []string{"map"}, nil),
		capacity:   prometheus.NewDesc("agentfence_bpf_map_capacity", "Capacity of a BPF map.", []string{"map"}, nil),
		build:      prometheus.NewDesc("agentfence_build_info", "Build information.", []string{"version", "goversion"}, nil),
		holds: prometheus.NewDesc("agentfence_pod_holds_total", "New Kubernetes pod cgroups the kernel held at deny (held), could not hold because "+
			"cgroup_sessions was full (failed: the pod ran unconfined until classified), and held cgroups removed (gone).", []string{"event"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.decisions, c.lost, c.active, c.cached, c.violations, c.entries, c.capacity, c.build, c.probed, c.conns, c.holds} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	if st, err := c.gate.Stats(); err == nil {
		counter(c.decisions, st.Allowed, "allowed")
		counter(c.decisions, st.Denied, "denied")
		counter(c.decisions, st.WouldDeny, "would_deny")
		counter(c.violations, st.Denied+st.WouldDeny)
		counter(c.lost, st.Lost, "gate")
	}
	if n, ok := c.procs.lost(); ok {
		counter(c.lost, n, "process")
	}
	if hs, err := c.gate.HostStats(); err == nil {
		counter(c.lost, hs.Lost, "hostname")
	}
	counter(c.lost, c.procs.dropped.Load(), "exec_queue")
	if n, ok := c.tls.lost(); ok {
		counter(c.lost, n, "tls")
		files, conns := c.tls.usage()
		gauge(c.probed, files)
		gauge(c.conns, conns)
	}
	if hs, err := c.gate.HoldStats(); err == nil {
		counter(c.holds, hs.Held, "held")
		counter(c.holds, hs.Failed, "failed")
		counter(c.holds, hs.Gone, "gone")
	}
	counts := c.sessions.StateCounts()
	for _, st := range []v1.State{v1.StateActive, v1.StateQuarantined, v1.StateRevoked, v1.StateExpired} {
		gauge(c.active, counts[st], string(st))
	}
	if c.procs.cache != nil {
		gauge(c.cached, c.procs.cache.Len())
	}
	for _, u := range c.gate.Usage() {
		gauge(c.entries, u.Entries, u.Name)
		gauge(c.capacity, u.Capacity, u.Name)
	}
	gauge(c.build, 1, version, runtime.Version())
}

// metricsServer serves /metrics from the private registry, /healthz (the
// process answers) and /readyz (programs attached and sessions adopted).
func metricsServer(reg *prometheus.Registry, gate *enforcer.Gate, sessions *session.Registry, procs *processes, tls *tlsCalls, ready *atomic.Bool) *http.Server {
	reg.MustRegister(newCollector(gate, sessions, procs, tls), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

func serveHTTP(s *http.Server, l net.Listener) error {
	if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// exportKernelPaths sets agentfence_kernel_path to 1 for the path that
// serves each optional kernel feature on this host, so a fleet shows where
// a fallback runs (agentfence doctor says why).
func exportKernelPaths(reg prometheus.Registerer, gate *enforcer.Gate, d *sockdestroy.Destroyer, processes bool) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "agentfence_kernel_path",
		Help: "1 for the path serving each optional kernel feature (preferred or fallback)."}, []string{"feature", "path"})
	reg.MustRegister(g)
	set := func(feature string, preferred bool, yes, no string) {
		if preferred {
			g.WithLabelValues(feature, yes).Set(1)
		} else {
			g.WithLabelValues(feature, no).Set(1)
		}
	}
	set("hostnames", gate.Hostnames() == nil, "cgroup_skb", "unavailable")
	set("pid_members", gate.TaskIterator() == nil, "task_iterator", "pid_table_walk")
	set("socket_naming", d.Iterator() == nil, "task_file_iterator", "pidfd_getfd")
	set("process_identity", processes, "raw_tracepoints", "unavailable")
	layer, _ := gate.SocketFamilies()
	g.WithLabelValues("socket_families", string(layer)).Set(1)
}
