// Package daemonset holds the Kubernetes manifests that run agentfenced on
// every node. This test decodes every manifest strictly into its typed
// object and checks the invariants the deployment relies on.
package daemonset

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/kube/node"
)

const namespace = "agentfence-system"

// decodeStrict decodes the single YAML document in file into out; unknown
// and duplicate fields are errors.
func decodeStrict(t *testing.T, file string, out any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "---" {
			t.Fatalf("%s: one document per file, found a --- separator", file)
		}
	}
	if err := unmarshalStrict(data, out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// unmarshalStrict converts YAML to JSON (duplicate keys are an error) and
// decodes it the way the API server does: keys are case-sensitive, and
// unknown or duplicate fields are errors. (encoding/json, behind
// sigs.k8s.io/yaml.UnmarshalStrict, matches keys case-insensitively and
// would accept "readOnlyRootFileSystem".)
func unmarshalStrict(data []byte, out any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, out, kjson.DisallowUnknownFields, kjson.DisallowDuplicateFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func checkMeta(t *testing.T, file string, tm metav1.TypeMeta, om metav1.ObjectMeta, apiVersion, kind string) {
	t.Helper()
	if tm.APIVersion != apiVersion || tm.Kind != kind {
		t.Errorf("%s: %s/%s, want %s/%s", file, tm.APIVersion, tm.Kind, apiVersion, kind)
	}
	if kind != "Namespace" && !strings.HasPrefix(kind, "Cluster") && om.Namespace != namespace {
		t.Errorf("%s: namespace %q, want %q", file, om.Namespace, namespace)
	}
	if om.Name == "" {
		t.Errorf("%s: no name", file)
	}
	if om.Labels["app.kubernetes.io/name"] != "agentfence" {
		t.Errorf("%s: missing label app.kubernetes.io/name=agentfence", file)
	}
}

// kustomization is the subset of kustomize's Kustomization used here.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images"`
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) this deployment uses; k8s.io/api has no type
// for it.
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	var k kustomization
	decodeStrict(t, "kustomization.yaml", &k)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization: %s/%s", k.APIVersion, k.Kind)
	}
	if k.Namespace != namespace {
		t.Errorf("kustomization namespace %q", k.Namespace)
	}
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		if f != "kustomization.yaml" {
			want = append(want, f)
		}
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources = %v, want every manifest %v", got, want)
	}
	if len(k.Images) != 1 || k.Images[0].Name != "agentfence/agentfence" {
		t.Errorf("kustomization images = %+v", k.Images)
	}
}

func TestNamespaceAndServiceAccount(t *testing.T) {
	var ns corev1.Namespace
	decodeStrict(t, "namespace.yaml", &ns)
	checkMeta(t, "namespace.yaml", ns.TypeMeta, ns.ObjectMeta, "v1", "Namespace")
	if ns.Name != namespace {
		t.Errorf("namespace name %q", ns.Name)
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Error("namespace must allow hostPID/hostPath pods (pod-security enforce=privileged)")
	}

	var sa corev1.ServiceAccount
	decodeStrict(t, "serviceaccount.yaml", &sa)
	checkMeta(t, "serviceaccount.yaml", sa.TypeMeta, sa.ObjectMeta, "v1", "ServiceAccount")
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("service account must not automount its token: only the DaemonSet's pod asks for it")
	}
}

// TestClusterRole: agentfenced reads pods, Agents and AgentSessions and
// writes nothing but NodeEnforcements and new events; no wildcard, no
// secrets.
func TestClusterRole(t *testing.T) {
	var cr rbacv1.ClusterRole
	decodeStrict(t, "clusterrole.yaml", &cr)
	checkMeta(t, "clusterrole.yaml", cr.TypeMeta, cr.ObjectMeta, "rbac.authorization.k8s.io/v1", "ClusterRole")
	read := []string{"get", "list", "watch"}
	writes := map[string]bool{}
	var granted []string
	for _, r := range cr.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if v == "*" || res == "*" || g == "*" || res == "secrets" {
						t.Errorf("rule %+v: wildcards and secrets are not for a node daemon", r)
					}
					if !slices.Contains(read, v) {
						writes[res+" "+v] = true
					}
					granted = append(granted, node.Permission{Group: g, Resource: res, Verb: v}.String())
				}
			}
		}
	}
	// What the node asks for (kube/node.Permissions, which doctor checks)
	// is what the role grants, no more, no less.
	var needed []string
	for _, p := range node.Permissions {
		needed = append(needed, p.String())
	}
	if slices.Sort(granted); !slices.Equal(granted, slices.Sorted(slices.Values(needed))) {
		t.Errorf("the ClusterRole grants %v; the node needs %v", granted, slices.Sorted(slices.Values(needed)))
	}
	want := map[string]bool{"nodeenforcements create": true, "nodeenforcements update": true, "nodeenforcements delete": true,
		"nodeenforcements/status update": true, "events create": true}
	if !maps.Equal(writes, want) {
		t.Errorf("writes %v, want only its reports and new events", writes)
	}
	var crb rbacv1.ClusterRoleBinding
	decodeStrict(t, "clusterrolebinding.yaml", &crb)
	checkMeta(t, "clusterrolebinding.yaml", crb.TypeMeta, crb.ObjectMeta, "rbac.authorization.k8s.io/v1", "ClusterRoleBinding")
	if crb.RoleRef.Name != cr.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" ||
		crb.Subjects[0].Name != "agentfence" || crb.Subjects[0].Namespace != namespace {
		t.Errorf("binding %+v", crb)
	}
}

func TestConfigMapParses(t *testing.T) {
	var cm corev1.ConfigMap
	decodeStrict(t, "configmap.yaml", &cm)
	checkMeta(t, "configmap.yaml", cm.TypeMeta, cm.ObjectMeta, "v1", "ConfigMap")
	data, ok := cm.Data["agentfence.yaml"]
	if !ok || len(cm.Data) != 1 {
		t.Fatalf("configmap data keys = %v, want only agentfence.yaml", keys(cm.Data))
	}
	c, err := config.Parse([]byte(data))
	if err != nil {
		t.Fatalf("agentfence.yaml in the ConfigMap does not parse: %v", err)
	}
	if !c.Kubernetes.Enabled || c.Kubernetes.NodeName != "" || c.Kubernetes.Kubeconfig != "" {
		t.Errorf("kubernetes %+v: want enabled, the node from $NODE_NAME, the pod's token", c.Kubernetes)
	}
	ds := loadDaemonSet(t)
	// The paths in the config must be inside the volumes that carry them.
	mounts := map[string]string{}
	for _, m := range ds.Spec.Template.Spec.Containers[0].VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	for key, p := range map[string]string{"api_socket": filepath.Dir(c.APISocket), "state_dir": c.StateDir} {
		if mounts[p] == "" {
			t.Errorf("config %s %q is not on a mounted volume", key, p)
		}
	}
	if !strings.HasPrefix(c.BPFFSPath, "/sys/fs/bpf/") || mounts["/sys/fs/bpf"] != "bpffs" {
		t.Errorf("bpffs_path %q must be under the bpffs volume", c.BPFFSPath)
	}
	if !strings.HasSuffix(c.MetricsAddr, ":9090") || strings.HasPrefix(c.MetricsAddr, "127.") {
		t.Errorf("metrics_addr %q must listen on the pod IP at port 9090 for the probes", c.MetricsAddr)
	}
}

func loadDaemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	decodeStrict(t, "daemonset.yaml", &ds)
	return ds
}

func TestDaemonSet(t *testing.T) {
	ds := loadDaemonSet(t)
	checkMeta(t, "daemonset.yaml", ds.TypeMeta, ds.ObjectMeta, "apps/v1", "DaemonSet")
	spec := ds.Spec.Template.Spec

	if sel := ds.Spec.Selector; sel == nil || len(sel.MatchLabels) == 0 {
		t.Fatal("no selector")
	} else {
		for k, v := range sel.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("selector %s=%s does not match the pod template", k, v)
			}
		}
	}

	if !spec.HostPID {
		t.Error("hostPID must be true")
	}
	// kubernetes.enabled: the pod's bound token is what names its node to
	// the admission policy.
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken || spec.ServiceAccountName != "agentfence" {
		t.Error("the pod must mount the agentfence service account's token")
	}
	if spec.HostNetwork {
		t.Error("hostNetwork is not needed")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 10 {
		t.Error("terminationGracePeriodSeconds must be set (>= 10s) to flush the audit spool")
	}
	if spec.ServiceAccountName != "agentfence" {
		t.Errorf("serviceAccountName = %q", spec.ServiceAccountName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Error("need a toleration {operator: Exists} to run on every node")
	}

	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy = %+v, want RollingUpdate maxUnavailable 1", us)
	}
	if us.RollingUpdate != nil && us.RollingUpdate.MaxSurge != nil && us.RollingUpdate.MaxSurge.String() != "0" {
		t.Error("maxSurge must be 0: two daemons on one node would fight over the socket and the pins")
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	if len(spec.InitContainers) != 0 {
		t.Error("unexpected init containers")
	}
	c := spec.Containers[0]
	if c.Image != "agentfence/agentfence:dev" {
		t.Errorf("image %q", c.Image)
	}
	if !slices.Equal(c.Args, []string{"--config", "/etc/agentfence/agentfence.yaml"}) {
		t.Errorf("args = %q", c.Args)
	}

	// Security context: not privileged, only the named capabilities.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("container must set privileged: false")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container must set allowPrivilegeEscalation: false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("container must set readOnlyRootFilesystem: true")
	}
	if sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	wantCaps := []corev1.Capability{"BPF", "KILL", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
	gotCaps := slices.Clone(sc.Capabilities.Add)
	slices.Sort(gotCaps)
	if !slices.Equal(gotCaps, wantCaps) {
		t.Errorf("capabilities.add = %v, want exactly %v", gotCaps, wantCaps)
	}
	if psc := spec.SecurityContext; psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod must use the RuntimeDefault seccomp profile")
	}

	// Every capability is explained next to where it is added.
	raw, err := os.ReadFile("daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range wantCaps {
		if !hasComment(string(raw), string(cp)) {
			t.Errorf("capability %s has no '# %s: why' comment", cp, cp)
		}
	}

	// Host mounts.
	type hostMount struct {
		hostPath, mountPath string
		readOnly            bool
		propagation         corev1.MountPropagationMode
		typ                 corev1.HostPathType
	}
	want := map[string]hostMount{
		"bpffs":     {"/sys/fs/bpf", "/sys/fs/bpf", false, corev1.MountPropagationHostToContainer, corev1.HostPathDirectory},
		"cgroup":    {"/sys/fs/cgroup", "/sys/fs/cgroup", false, corev1.MountPropagationHostToContainer, corev1.HostPathDirectory},
		"btf":       {"/sys/kernel/btf", "/sys/kernel/btf", true, corev1.MountPropagationNone, corev1.HostPathDirectory},
		"host-proc": {"/proc", "/host/proc", true, corev1.MountPropagationHostToContainer, corev1.HostPathDirectory},
		"run":       {"/run/agentfence", "/run/agentfence", false, corev1.MountPropagationNone, corev1.HostPathDirectoryOrCreate},
		"state":     {"/var/lib/agentfence", "/var/lib/agentfence", false, corev1.MountPropagationNone, corev1.HostPathDirectoryOrCreate},
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if _, dup := mounts[m.Name]; dup {
			t.Errorf("volume %s mounted twice", m.Name)
		}
		mounts[m.Name] = m
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("mount %s has no volume", m.Name)
		}
		// The API server rejects Bidirectional in unprivileged containers.
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("mount %s: Bidirectional propagation is only allowed in privileged containers", m.Name)
		}
	}
	for name, w := range want {
		v, ok := vols[name]
		if !ok || v.HostPath == nil {
			t.Errorf("volume %s: want hostPath %s", name, w.hostPath)
			continue
		}
		if v.HostPath.Path != w.hostPath || v.HostPath.Type == nil || *v.HostPath.Type != w.typ {
			t.Errorf("volume %s = %+v, want hostPath %s type %s", name, v.HostPath, w.hostPath, w.typ)
		}
		m, ok := mounts[name]
		if !ok {
			t.Errorf("volume %s is not mounted", name)
			continue
		}
		prop := corev1.MountPropagationNone
		if m.MountPropagation != nil {
			prop = *m.MountPropagation
		}
		if m.MountPath != w.mountPath || m.ReadOnly != w.readOnly || prop != w.propagation {
			t.Errorf("mount %s = {%s readOnly=%v propagation=%s}, want {%s readOnly=%v propagation=%s}",
				name, m.MountPath, m.ReadOnly, prop, w.mountPath, w.readOnly, w.propagation)
		}
	}
	for name, v := range vols {
		if v.HostPath != nil {
			if _, ok := want[name]; !ok {
				t.Errorf("unexpected hostPath volume %s (%s)", name, v.HostPath.Path)
			}
		}
	}
	if m, ok := mounts["config"]; !ok || m.MountPath != "/etc/agentfence" || !m.ReadOnly ||
		vols["config"].ConfigMap == nil || vols["config"].ConfigMap.Name != "agentfence-config" {
		t.Error("config volume must mount ConfigMap agentfence-config read-only at /etc/agentfence")
	}
	// Each mount is explained: a comment line directly above "- name: X"
	// in volumeMounts.
	for _, m := range c.VolumeMounts {
		if !commentAbove(string(raw), "            - name: "+m.Name+"\n              mountPath: ") {
			t.Errorf("volume mount %s has no comment saying why", m.Name)
		}
	}

	// Probes on the named metrics port.
	port := ""
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			port = p.Name
			if p.ContainerPort != 9090 {
				t.Errorf("metrics containerPort = %d, want 9090", p.ContainerPort)
			}
		}
	}
	if port == "" {
		t.Fatal("no port named metrics")
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s probe: want httpGet", pr.name)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path || g.Port.String() != "metrics" {
			t.Errorf("%s probe = %s on %s, want %s on the metrics port", pr.name, g.Path, g.Port.String(), pr.path)
		}
	}

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		if !okReq || !okLim {
			t.Errorf("resources: %s needs both a request and a limit", r)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("resources: %s request %s exceeds limit %s", r, req.String(), lim.String())
		}
	}
}

// hasComment reports whether a YAML comment line starts with "# NAME:".
func hasComment(doc, name string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "# "+name+":") {
			return true
		}
	}
	return false
}

// commentAbove reports whether the line before the occurrence of anchor is a
// comment.
func commentAbove(doc, anchor string) bool {
	i := strings.Index(doc, anchor)
	if i <= 0 {
		return false
	}
	before := strings.TrimRight(doc[:i], "\n")
	last := before[strings.LastIndex(before, "\n")+1:]
	return strings.HasPrefix(strings.TrimSpace(last), "#")
}

func TestServiceAndServiceMonitor(t *testing.T) {
	ds := loadDaemonSet(t)
	podLabels := ds.Spec.Template.Labels

	var svc corev1.Service
	decodeStrict(t, "service.yaml", &svc)
	checkMeta(t, "service.yaml", svc.TypeMeta, svc.ObjectMeta, "v1", "Service")
	for k, v := range svc.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("service selector %s=%s does not select the DaemonSet pods", k, v)
		}
	}
	if len(svc.Spec.Selector) == 0 {
		t.Error("service has no selector")
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("service ports = %+v, want one named metrics targeting the metrics port", svc.Spec.Ports)
	}

	var sm serviceMonitor
	decodeStrict(t, "servicemonitor.yaml", &sm)
	checkMeta(t, "servicemonitor.yaml", sm.TypeMeta, sm.Metadata, "monitoring.coreos.com/v1", "ServiceMonitor")
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %s does not select the metrics service (labels %v)", sel, svc.Labels)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
		t.Errorf("namespaceSelector = %+v", sm.Spec.NamespaceSelector)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("endpoints = %+v, want port metrics path /metrics", sm.Spec.Endpoints)
	}
}

func TestStrictDecodingRejectsTypos(t *testing.T) {
	// The decoder used above must catch a misspelled field; otherwise the
	// tests would pass on manifests the API server rejects or ignores.
	var ds appsv1.DaemonSet
	bad := bytes.Replace(mustRead(t, "daemonset.yaml"), []byte("readOnlyRootFilesystem"), []byte("readOnlyRootFileSystem"), 1)
	if err := unmarshalStrict(bad, &ds); err == nil || !strings.Contains(err.Error(), "readOnlyRootFileSystem") {
		t.Errorf("strict decode accepted a misspelled field: %v", err)
	}
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
