// Package kubetest runs a real etcd and kube-apiserver for tests
// (controller-runtime's envtest) with agentfence's CRDs and admission
// policies from deploy/ installed. `make kube-assets` builds the two from
// the Go module proxy (tools/apiserver, tools/etcd); KUBEBUILDER_ASSETS
// points at them.
package kubetest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// RequiredEnv, when 1, turns a missing KUBEBUILDER_ASSETS into a failure
// (make test-kube sets it).
const RequiredEnv = "AGENTFENCE_KUBE_TESTS"

// Env is a running control plane.
type Env struct {
	env    *envtest.Environment
	Config *rest.Config // system:masters
	Client client.Client
	Scheme *kruntime.Scheme
}

// Root is the repository's top directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Start runs etcd and kube-apiserver with the CRDs of deploy/crds and the
// admission policies of deploy/admission, and stops them when the test
// ends. Without KUBEBUILDER_ASSETS it skips, saying how to get them.
func Start(t testing.TB) *Env {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		msg := "KUBEBUILDER_ASSETS is not set: `make test-kube` builds a kube-apiserver and etcd and runs these tests"
		if os.Getenv(RequiredEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctrllog.SetLogger(logr.Discard()) // the control plane's own logs are in its output
	scheme := kruntime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(Root(), "deploy", "crds")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	// A host whose only interface is loopback: kube-apiserver cannot pick
	// an address to advertise by itself, and its endpoint reconciler
	// refuses 127.0.0.1.
	api := env.ControlPlane.GetAPIServer()
	api.Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none").
		// Ends open watches when it stops: otherwise a stop waits out the
		// server's 60 s shutdown timeout for them (TestKubernetesSession
		// stops it while a daemon watches).
		Set("shutdown-watch-termination-grace-period", "2s")
	// A directory of its own keeps the serving and service-account keys
	// across StopAPIServer and StartAPIServer: tokens stay valid.
	api.CertDir = t.TempDir()
	env.ControlPlaneStopTimeout = 2 * time.Minute // watches drain slowly on a busy host
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start etcd and kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop the control plane: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{env: env, Config: cfg, Client: c, Scheme: scheme}
	e.applyAdmission(t)
	return e
}

// StopAPIServer stops kube-apiserver; etcd keeps the objects.
func (e *Env) StopAPIServer(t testing.TB) {
	t.Helper()
	if err := e.env.ControlPlane.APIServer.Stop(); err != nil {
		t.Fatal(err)
	}
}

// StartAPIServer starts it again, on the same address with the same keys.
// Clients from User must be made again: their certificates are not kept.
func (e *Env) StartAPIServer(t testing.TB) {
	t.Helper()
	if err := e.env.ControlPlane.APIServer.Start(); err != nil {
		t.Fatal(err)
	}
}

// applyAdmission creates the policies and bindings of deploy/admission.
func (e *Env) applyAdmission(t testing.TB) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(Root(), "deploy", "admission", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		if err := e.Client.Create(context.Background(), decodeFile(t, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// User is a client acting as the named user in the given groups.
func (e *Env) User(t testing.TB, name string, groups ...string) client.Client {
	t.Helper()
	c, err := client.New(e.UserConfig(t, name, groups...), client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// UserConfig is a client config for the named user in the given groups.
func (e *Env) UserConfig(t testing.TB, name string, groups ...string) *rest.Config {
	t.Helper()
	u, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := u.Config()
	// No client-side rate limit: a benchmark writes thousands of objects,
	// which client-go's default of 5 a second would take minutes over.
	cfg.QPS = -1
	return cfg
}

// Object is an API object a client writes.
type Object = client.Object

// Key is the namespace and name of obj.
func Key(obj client.Object) client.ObjectKey { return client.ObjectKeyFromObject(obj) }

// NodeConfig is a client config for agentfenced on the named node, as the
// DaemonSet runs it: the agentfence service account, bound by the
// ClusterRole of deploy/daemonset, with a token bound to its pod on that
// node (a Node and the pod are created for it).
func (e *Env) NodeConfig(t testing.TB, node string) *rest.Config {
	t.Helper()
	ctx := context.Background()
	const ns, sa = "agentfence-system", "agentfence"
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}},
	}
	for _, f := range []string{"clusterrole.yaml", "clusterrolebinding.yaml"} {
		objs = append(objs, decodeFile(t, filepath.Join(Root(), "deploy", "daemonset", f)))
	}
	for _, o := range objs {
		if err := e.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agentfence-" + node, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agentfenced", Image: "agentfence/agentfence:dev"}}}}
	// Either may exist already: a test that gives the Node labels makes
	// it first, and a second daemon of the node takes the first one's pod.
	for _, o := range []client.Object{&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, pod} {
		if err := e.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// Kubeconfig writes cfg as a kubeconfig file, for a daemon under test.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["node"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken, ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "node"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// decodeFile reads the one object of a manifest, strictly.
func decodeFile(t testing.TB, file string) client.Object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct{ Kind string }
	if err := yaml.Unmarshal(data, &meta); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var obj client.Object
	switch meta.Kind {
	case "ValidatingAdmissionPolicy":
		obj = &admissionv1.ValidatingAdmissionPolicy{}
	case "ValidatingAdmissionPolicyBinding":
		obj = &admissionv1.ValidatingAdmissionPolicyBinding{}
	case "ClusterRole":
		obj = &rbacv1.ClusterRole{}
	case "ClusterRoleBinding":
		obj = &rbacv1.ClusterRoleBinding{}
	default:
		t.Fatalf("%s: unexpected kind %q", file, meta.Kind)
	}
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return obj
}

// Eventually retries try until it returns nil, for up to a minute: the API
// server starts enforcing a new admission policy or serving a new CRD a
// moment after it was created, and nothing says when.
func Eventually(t testing.TB, what string, try func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := try()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Denied says whether err is the API server refusing a request as invalid
// or forbidden.
func Denied(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsForbidden(err)
}
