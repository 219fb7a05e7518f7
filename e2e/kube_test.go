package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/kube/kubetest"
	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// kubePods makes the cgroups the kubelet (systemd driver) would make for
// pods and one container each, and removes them at the end; it returns
// the containers' cgroups.
func kubePods(t *testing.T, uids ...string) (containers []string) {
	t.Helper()
	qos := kubeQoS(t)
	for _, uid := range uids {
		containers = append(containers, kubePod(t, qos, uid))
	}
	return containers
}

// kubeQoS makes the kubelet's (systemd driver) best-effort QoS cgroup, and
// removes it at the end.
func kubeQoS(t *testing.T) string {
	t.Helper()
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(root, "kubepods.slice")
	if _, err := os.Stat(top); err == nil {
		t.Skipf("%s exists: this host runs a kubelet, whose cgroups this test will not touch", top)
	}
	qos := filepath.Join(top, "kubepods-besteffort.slice")
	if err := os.MkdirAll(qos, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(qos); os.Remove(top) })
	return qos
}

// kubePod makes a pod's cgroup in qos and one container's below it, as the
// kubelet would, removes them at the end, and returns the container's.
func kubePod(t *testing.T, qos, uid string) string {
	t.Helper()
	pod := filepath.Join(qos, "kubepods-besteffort-pod"+strings.ReplaceAll(uid, "-", "_")+".slice")
	ctr := filepath.Join(pod, "cri-containerd-"+strings.Repeat(strings.ReplaceAll(uid, "-", "")[:16], 4)+".scope")
	if err := os.MkdirAll(ctr, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(ctr); os.Remove(pod) })
	return ctr
}

// podSessions are the daemon's sessions bound to the pod.
func (d *daemon) podSessions(t *testing.T, uid string) []v1.Session {
	t.Helper()
	out, stderr, code := d.cli(t, nil, "session", "list", "--label", "agentfence.io/pod="+uid, "--json")
	if code != 0 {
		t.Fatalf("session list: exit %d: %s", code, stderr)
	}
	var ss []v1.Session
	if err := json.Unmarshal([]byte(out), &ss); err != nil {
		t.Fatalf("session list %q: %v", out, err)
	}
	return ss
}

// kubeDaemon starts agentfenced following the cluster of e as node-a,
// with more keys of the kubernetes section (indented YAML lines).
func kubeDaemon(t testing.TB, e *kubetest.Env, more string) *daemon {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agentfence.yaml")
	conf := fmt.Sprintf("kubernetes:\n  enabled: true\n  node_name: node-a\n  kubeconfig: %s\n%s",
		kubetest.Kubeconfig(t, e.NodeConfig(t, "node-a")), more)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return startDaemon(t, "--config", cfg)
}

// TestKubernetesSession: agentfenced with kubernetes.enabled, against a
// real kube-apiserver, binds a pod of its node to an AgentSession and the
// kernel judges the pod's connects by its scope; a pod of another node is
// not its to bind; retiring the Agent revokes the session.
func TestKubernetesSession(t *testing.T) {
	e := kubetest.Start(t)
	ctx := context.Background()
	admin := e.User(t, "alice", "system:masters")
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	sel := map[string]string{"agent": "triage"}
	mine := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-a", Namespace: "default", Labels: sel},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "agent", Image: "agent:1"}}}}
	theirs := mine.DeepCopy()
	theirs.Name, theirs.Spec.NodeName = "agent-b", "node-b"
	for _, p := range []*corev1.Pod{mine, theirs} {
		if err := admin.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	ctr := kubePods(t, string(mine.UID), string(theirs.UID))[0]

	d := kubeDaemon(t, e, "  record_labels: [agent]\n")

	port := int32(allowed.Port())
	agent := &v1alpha1.Agent{ObjectMeta: metav1.ObjectMeta{Name: "triage", Namespace: "default"}, Spec: v1alpha1.AgentSpec{
		SPIFFEID: "spiffe://example.org/agent/triage", Owner: "team-a", Version: "1.2.0",
		Ceiling:     []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "127.0.0.0/8"}},
		PodSelector: metav1.LabelSelector{MatchLabels: sel},
		Lifecycle: v1alpha1.Lifecycle{State: v1alpha1.Operating, Transitions: []v1alpha1.Transition{
			{State: v1alpha1.Operating, Actor: "alice", Time: metav1.Now()}}}}}
	if err := admin.Create(ctx, agent); err != nil {
		t.Fatal(err)
	}
	s := &v1alpha1.AgentSession{ObjectMeta: metav1.ObjectMeta{Name: "fix-bug", Namespace: "default"}, Spec: v1alpha1.AgentSessionSpec{
		Agent: "triage", Intent: "fix bug 7", Origin: v1alpha1.Origin{Kind: v1alpha1.Human, Principal: "alice@example.com"},
		Scope: []v1alpha1.Rule{{Protocol: v1alpha1.TCP, CIDR: "127.0.0.1/32", Port: port}},
		Pods:  v1alpha1.Pods{Selector: &metav1.LabelSelector{}}}}
	kubetest.Eventually(t, "the session policy to admit", func() error { return admin.Create(ctx, s) })

	var local v1.Session
	kubetest.Eventually(t, "node-a to bind its pod", func() error {
		ss := d.podSessions(t, string(mine.UID))
		if len(ss) != 1 || ss[0].State != v1.StateActive || ss[0].Binding.PodUID != string(mine.UID) {
			return fmt.Errorf("sessions %+v", ss)
		}
		local = ss[0]
		return nil
	})
	if local.Intent != "fix bug 7" || local.Agent == nil || local.Agent.ID != agent.Spec.SPIFFEID || local.OpenedBy != "kubernetes" {
		t.Errorf("local session %+v", local)
	}
	res := kerneltest.Run(t, ctr, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other},
		kerneltest.SendUDP{Addr: netip.AddrPortFrom(allowed.Addr(), allowed.Port())})
	expectResults(t, res, "ok", "EPERM", "EPERM")
	// The records name the pod as the node's informers have it.
	kubetest.Eventually(t, "the pod's connect on record", func() error {
		for _, r := range d.records(t) {
			if r.Kind != audit.KindConnect || r.Process == nil || r.Process.PID != uint32(res[0].PID) {
				continue
			}
			want := audit.Pod{UID: string(mine.UID), Namespace: "default", Name: "agent-a", Node: "node-a", Labels: sel}
			if r.Pod == nil || !reflect.DeepEqual(*r.Pod, want) || r.Process.PodUID != string(mine.UID) {
				return fmt.Errorf("record's pod %+v, want %+v", r.Pod, want)
			}
			return nil
		}
		return errors.New("no record yet")
	})
	if ss := d.podSessions(t, string(theirs.UID)); len(ss) != 0 {
		t.Errorf("node-a bound node-b's pod: %+v", ss)
	}
	d.queriedNotExported(t, func(name string) bool { return strings.HasPrefix(name, kubernetesMetrics) })

	// Without the API server nothing changes: the node keeps what it saw,
	// and says it is out of sync.
	metrics := d.metricsBase(t) + "/metrics"
	if m := scrape(t, metrics); m["agentfence_kubernetes_connected"] != 1 || m["agentfence_kubernetes_enforce_seconds_count"] != 1 {
		t.Errorf("sync metrics while following: connected %v, enforced %v", m["agentfence_kubernetes_connected"],
			m["agentfence_kubernetes_enforce_seconds_count"])
	}
	if got := kubeDoctor(t, d); !maps.Equal(got, map[string]string{"kubernetes/api_server": "ok", "kubernetes/crds": "ok",
		"kubernetes/rbac": "ok", "kubernetes/node": "ok"}) {
		t.Errorf("doctor while following: %v", got)
	}
	stopping := time.Now()
	e.StopAPIServer(t)
	t.Logf("kube-apiserver stopped in %v", time.Since(stopping))
	kubetest.Eventually(t, "the node to say it is out of sync", func() error {
		failed := `agentfence_kubernetes_api_requests_total{result="failed"}`
		if m := scrape(t, metrics); m["agentfence_kubernetes_connected"] != 0 || m[failed] == 0 {
			return fmt.Errorf("connected %v, failed requests %v", m["agentfence_kubernetes_connected"], m[failed])
		}
		return nil
	})
	expectResults(t, kerneltest.Run(t, ctr, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other}), "ok", "EPERM")
	if ss := d.podSessions(t, string(mine.UID)); len(ss) != 1 || ss[0].ID != local.ID || ss[0].State != v1.StateActive {
		t.Errorf("sessions while the API server is down: %+v", ss)
	}
	if got := kubeDoctor(t, d); !maps.Equal(got, map[string]string{"kubernetes/api_server": "missing"}) {
		t.Errorf("doctor without the API server: %v", got)
	}
	e.StartAPIServer(t)
	admin = e.User(t, "alice", "system:masters")
	kubetest.Eventually(t, "the node to follow the API server again", func() error {
		if m := scrape(t, metrics); m["agentfence_kubernetes_connected"] != 1 {
			return fmt.Errorf("connected %v", m["agentfence_kubernetes_connected"])
		}
		return nil
	})

	// Retire the agent: the pod's session is revoked and it reaches nothing
	// (the node has caught up with the API server).
	agent.Spec.Lifecycle.State = v1alpha1.Retired
	agent.Spec.Lifecycle.Transitions = append(agent.Spec.Lifecycle.Transitions,
		v1alpha1.Transition{State: v1alpha1.Retired, Actor: "alice", Time: metav1.Now()})
	kubetest.Eventually(t, "the API server to take the retirement", func() error { return admin.Update(ctx, agent) })
	kubetest.Eventually(t, "node-a to revoke", func() error {
		if ss := d.podSessions(t, string(mine.UID)); len(ss) != 1 || ss[0].State != v1.StateRevoked {
			return fmt.Errorf("sessions %+v", ss)
		}
		return nil
	})
	expectResults(t, kerneltest.Run(t, ctr, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}), "EPERM")

	// The node recorded the retirement once, in alice's name, and its local
	// API refuses the agent from now on.
	var retired []audit.Record
	for _, r := range d.records(t) {
		if r.Kind == audit.KindAgent {
			retired = append(retired, r)
		}
	}
	if len(retired) != 1 || retired[0].Event != "retired" || retired[0].Actor != "alice" || retired[0].Agent == nil ||
		retired[0].Agent.ID != agent.Spec.SPIFFEID || retired[0].Agent.Owner != "team-a" {
		t.Errorf("agent records: %+v", retired)
	}
	_, stderr, code := d.cli(t, nil, "run", "--intent", "after retirement", "--agent", agent.Spec.SPIFFEID, "--", "true")
	if code == 0 || !strings.Contains(stderr, "agent.id") || !strings.Contains(stderr, "retired") {
		t.Errorf("a session for the retired agent: exit %d: %s", code, stderr)
	}
}

// kubeDoctor runs `agentfence doctor` with the daemon's config and returns
// the status of each of its kubernetes/ lines.
func kubeDoctor(t *testing.T, d *daemon) map[string]string {
	t.Helper()
	cfg := d.args[slices.Index(d.args, "--config")+1]
	stdout, stderr, code := d.cli(t, nil, "doctor", "--config", cfg)
	if code != 0 {
		t.Fatalf("doctor exited %d: %s%s", code, stdout, stderr)
	}
	got := map[string]string{}
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[0], "kubernetes/") {
			got[f[0]] = f[1]
		}
	}
	return got
}
