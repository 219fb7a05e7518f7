package node

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/agentfence/agentfence/doctor"
	"github.com/agentfence/agentfence/kube/kubetest"
)

// TestDoctor: what `agentfence doctor` says about following the cluster,
// against a real API server, as the DaemonSet's identity and as others.
func TestDoctor(t *testing.T) {
	e := kubetest.Start(t)
	ctx := context.Background()
	status := func(checks []doctor.Check) map[string]doctor.Check {
		out := map[string]doctor.Check{}
		for _, c := range checks {
			if c.Gate {
				t.Errorf("%s marked as the gate's: the gate runs without a cluster", c.Name)
			}
			out[c.Name] = c
		}
		return out
	}

	// The DaemonSet's identity, on a worker: everything there.
	got := status(Doctor(ctx, e.NodeConfig(t, "node-a"), "node-a", false))
	for _, name := range []string{CheckAPIServer, CheckCRDs, CheckRBAC, CheckNode} {
		if got[name].Status != doctor.StatusOK {
			t.Errorf("as the node: %s %+v", name, got[name])
		}
	}

	// A control-plane node holds nothing unless configured to.
	cp := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp", Labels: map[string]string{"node-role.kubernetes.io/control-plane": ""}}}
	if err := e.Client.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}
	cfg := e.NodeConfig(t, "cp")
	if c := status(Doctor(ctx, cfg, "cp", false))[CheckNode]; c.Status != doctor.StatusDegraded || !strings.Contains(c.Detail, "control-plane") {
		t.Errorf("control-plane node: %+v", c)
	}
	if c := status(Doctor(ctx, cfg, "cp", true))[CheckNode]; c.Status != doctor.StatusOK {
		t.Errorf("control-plane node with hold_control_plane: %+v", c)
	}

	// A user without the ClusterRole: each refusal named; no Node.
	got = status(Doctor(ctx, e.UserConfig(t, "mallory"), "node-x", false))
	if c := got[CheckRBAC]; c.Status != doctor.StatusMissing || !strings.Contains(c.Detail, "list pods") ||
		!strings.Contains(c.Detail, "update nodeenforcements/status.agentfence.io") || c.Impact == "" {
		t.Errorf("without RBAC: %+v", c)
	}
	if c := got[CheckNode]; c.Status != doctor.StatusMissing {
		t.Errorf("without a Node: %+v", c)
	}

	// No API server there: one line, which says where it looked.
	bad := rest.CopyConfig(e.Config)
	bad.Host = "https://127.0.0.1:1"
	checks := Doctor(ctx, bad, "node-a", false)
	if len(checks) != 1 || checks[0].Name != CheckAPIServer || checks[0].Status != doctor.StatusMissing ||
		!strings.Contains(checks[0].Detail, "127.0.0.1:1") {
		t.Errorf("unreachable: %+v", checks)
	}
}
