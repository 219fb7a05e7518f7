package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/kube/v1alpha1"
)

// hold settles the kernel's hold on each pod of the node (bpf/podhold.c
// holds every pod cgroup at deny from its mkdir): a pod an Agent selects
// stays held until a session binds it (a running one is held now), and
// every other pod is released. A retired Agent still selects its pods:
// they stay denied.
func (c *Controller) hold(agents []*v1alpha1.Agent, pods []*corev1.Pod) error {
	seen := map[string]bool{}
	var errs []error
	for _, p := range pods {
		uid := string(p.UID)
		seen[uid] = true
		sel := selectedByAgent(p, agents)
		if last, ok := c.classified[uid]; ok && last == sel {
			continue
		}
		if !c.cfg.PodCgroup(uid) {
			continue // not made yet: held when it is, and the watch pokes
		}
		op, verb := c.sessions.ReleasePod, "released"
		if sel {
			// A no-op for a pod its session has bound.
			op, verb = c.sessions.HoldPod, "held"
		}
		done, err := op(uid)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err))
			continue
		}
		c.classified[uid] = sel
		if done {
			c.cfg.Log.Info("pod "+verb, "pod", p.Namespace+"/"+p.Name, "uid", uid)
		}
	}
	for uid := range c.classified {
		if !seen[uid] {
			delete(c.classified, uid)
		}
	}
	return errors.Join(errs...)
}

// selectedByAgent reports whether an Agent of p's namespace selects p.
func selectedByAgent(p *corev1.Pod, agents []*v1alpha1.Agent) bool {
	for _, a := range agents {
		if a.Namespace != p.Namespace {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&a.Spec.PodSelector)
		// An Agent whose selector cannot be read (admission refuses one)
		// selects every pod of its namespace: held, not let go.
		if err != nil || sel.Matches(labels.Set(p.Labels)) {
			return true
		}
	}
	return false
}

// Labels of a control-plane node: the current one and the one before
// Kubernetes 1.24.
var controlPlaneLabels = []string{"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"}

// startHold reads this node's Node, waiting for the API server as long as
// ctx lasts, and starts the hold unless this is a control-plane node (and
// HoldControlPlane is off): its static pods, the API server's among them,
// would wait for mirror pods that API server has to write. A Node that
// does not exist is no control-plane node.
func (c *Controller) startHold(ctx context.Context) ([]string, error) {
	var n corev1.Node
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := c.client.Get(ctx, client.ObjectKey{Name: c.cfg.NodeName}, &n)
		if err == nil || apierrors.IsNotFound(err) {
			break
		}
		c.cfg.Log.Warn("reading this node's Node to decide on holding new pods", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	if l := controlPlane(&n); l != "" && !c.cfg.HoldControlPlane {
		c.cfg.Log.Info("control-plane node: new pods are not held (kubernetes.hold_control_plane)", "label", l)
		return c.cfg.Hold(false)
	}
	return c.cfg.Hold(true)
}

// watchDirs calls poke whenever a directory appears in one of dirs, until
// stop: a pod cgroup the kernel just held, to be classified at once rather
// than at the pod's next event. A missed event (queue overflow) costs the
// pod the wait for the next resync, never its hold.
func watchDirs(dirs []string, poke func()) (stop func(), _ error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: inotify: %w", err)
	}
	// Through the runtime's poller, so that Close ends a pending Read.
	f := os.NewFile(uintptr(fd), "inotify")
	for _, d := range dirs {
		if _, err := unix.InotifyAddWatch(fd, d, unix.IN_CREATE|unix.IN_ONLYDIR); err != nil {
			f.Close()
			return nil, fmt.Errorf("kubernetes: watch %s: %w", d, err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			poke()
		}
	}()
	return func() { f.Close(); <-done }, nil
}
