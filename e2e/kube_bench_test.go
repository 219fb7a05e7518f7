package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// BenchmarkKubernetesDaemonMemory: agentfenced following a cluster with
// 1,000 pods on its node and 10,000 AgentSessions (target: at most 96 MiB
// resident), beside the same daemon not following it, in one run; and the
// requests it makes to the API server in a minute at rest (target: none,
// the informers only watch). Run with -benchtime 1x (make bench-kube).
func BenchmarkKubernetesDaemonMemory(b *testing.B) {
	const pods, sessions = 1000, 10000
	e := kubetest.Start(b)
	ctx := context.Background()
	admin := e.User(b, "alice", "system:masters")
	agent := &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: "default"}, Spec: v1alpha1.AgentSpec{
		SPIFFEID: "spiffe://example.org/agent/bench", Owner: "team-a", Version: "1",
		Ceiling:     []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "10.0.0.0/8"}},
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"agent": "bench"}},
		Lifecycle: v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
			{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}}}
	if err := admin.Create(ctx, agent); err != nil {
		b.Fatal(err)
	}
	// Eight writers: one at a time, 11,000 objects take minutes.
	create := func(n int, obj func(i int) kubetest.Object) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < n; i += 8 {
					o := obj(i)
					var err error
					for range 100 { // the session policy admits once it sees the Agent
						if err = admin.Create(ctx, o); err == nil || !kubetest.Denied(err) {
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	create(pods, func(i int) kubetest.Object {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Namespace: "default",
			Labels: map[string]string{"app": "web", "pod-template-hash": fmt.Sprint(i)}},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "c:1"}}}}
	})
	create(sessions, func(i int) kubetest.Object {
		// Sessions of pods on other nodes: this node follows them all
		// and binds none.
		return &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s-%d", i), Namespace: "default"},
			Spec: v1alpha1.AgentSessionSpec{Agent: "bench", Intent: "bench", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice"},
				Scope: []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "10.1.0.0/16", Port: 443}},
				Pods:  v1alpha1.Pods{Names: []string{fmt.Sprintf("elsewhere-%d", i)}}}}
	})

	report := func(d *daemon, suffix string) {
		m := scrape(b, d.metricsBase(b)+"/metrics")
		b.ReportMetric(m["process_resident_memory_bytes"]/(1<<20), "rss"+suffix+"-MiB")
		b.ReportMetric(float64(memory(b, d.cmd.Process.Pid, "VmHWM"))/(1<<20), "rss-peak"+suffix+"-MiB")
		b.ReportMetric(m["go_memstats_heap_inuse_bytes"]/(1<<20), "heap"+suffix+"-MiB")
		for kind, kib := range residentByKind(b, d.cmd.Process.Pid) {
			b.ReportMetric(float64(kib)/1024, kind+suffix+"-MiB")
		}
	}
	b.ResetTimer()
	for range b.N {
		base := startDaemon(b)
		report(base, "-without-kubernetes")
		base.stop(b)

		d := kubeDaemon(b, e, "")
		waitFor(b, "the node to follow the cluster", func() bool { return strings.Contains(d.log(), "following the cluster") })
		requests := func() float64 {
			m := scrape(b, d.metricsBase(b)+"/metrics")
			return m[`agentfence_kubernetes_api_requests_total{result="answered"}`] + m[`agentfence_kubernetes_api_requests_total{result="failed"}`]
		}
		// At rest: what a minute costs, measured over one.
		before := requests()
		time.Sleep(time.Minute)
		perMinute := requests() - before
		report(d, "")
		b.ReportMetric(perMinute, "api-requests/min")
		// A node that runs an agent holds the TLS probes too, loaded at
		// its first session.
		d.openSession(b, "--intent", "bench", "--allow", "tcp://127.0.0.1:9")
		report(d, "-with-session")
		d.stop(b)
	}
	b.ReportMetric(0, "ns/op")
}

// residentByKind splits a process's resident memory (KiB) by what backs
// it: anonymous memory (the Go heap, stacks, the runtime), the BPF maps it
// has mapped (ring buffers map their data pages twice, so each counts
// double), and files (the executable's pages, shared and reclaimable).
func residentByKind(b *testing.B, pid int) map[string]int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]int{"anon": 0, "bpf-map": 0, "file": 0}
	kind := ""
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			kind = "anon"
			if len(f) >= 6 && strings.HasPrefix(f[5], "anon_inode:bpf-map") {
				kind = "bpf-map"
			} else if len(f) >= 6 && strings.HasPrefix(f[5], "/") {
				kind = "file"
			}
		case len(f) == 3 && f[0] == "Rss:":
			n, err := strconv.Atoi(f[1])
			if err != nil {
				b.Fatal(err)
			}
			out[kind] += n
		}
	}
	return out
}
