package node

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// TestSlim: the informers keep what plan, hold and the pod index read, and
// drop the rest (docs/benchmarks.md: the daemon's memory).
func TestSlim(t *testing.T) {
	fat := metav1.ObjectMeta{Name: "s", Namespace: "default", UID: "u", ResourceVersion: "7", Generation: 3,
		CreationTimestamp: metav1.Unix(1_800_000_000, 0),
		Labels:            map[string]string{"app": "coder"},
		Annotations:       map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"spec":{}}`},
		OwnerReferences:   []metav1.OwnerReference{{Name: "o"}}, Finalizers: []string{"f"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	s := benchSession("s", "coder", "pod")
	s.ObjectMeta = *fat.DeepCopy()
	spec := *s.Spec.DeepCopy()
	out, err := slimMeta(s)
	if err != nil {
		t.Fatal(err)
	}
	want := metav1.ObjectMeta{Name: "s", Namespace: "default", UID: "u", ResourceVersion: "7", Generation: 3, CreationTimestamp: fat.CreationTimestamp}
	if got := out.(*v1alpha1.AgentSession); !reflect.DeepEqual(got.ObjectMeta, want) || !reflect.DeepEqual(got.Spec, spec) {
		t.Errorf("slimMeta kept %+v, spec %+v", got.ObjectMeta, got.Spec)
	}

	p := &corev1.Pod{ObjectMeta: *fat.DeepCopy(), Spec: corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "sa",
		Containers: []corev1.Container{{Name: "c", Image: "i"}}}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"}}
	out, err = slimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Pod)
	if got.Name != "s" || got.UID != "u" || got.Labels["app"] != "coder" || got.Spec.NodeName != "node-a" ||
		got.Spec.ServiceAccountName != "sa" || got.Status.Phase != corev1.PodRunning {
		t.Errorf("slimPod lost what the node reads: %+v", got)
	}
	if got.Annotations != nil || got.Spec.Containers != nil || got.Status.PodIP != "" || got.ManagedFields != nil {
		t.Errorf("slimPod kept what the node never reads: %+v", got)
	}
}
