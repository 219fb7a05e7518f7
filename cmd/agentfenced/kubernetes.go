package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/kube/node"
)

// startKubernetes follows the cluster's Agents and AgentSessions for the
// pods of this node (kubernetes.enabled). It starts after the API: local
// sessions keep working whatever the API server does.
func (d *daemon) startKubernetes(ctx context.Context) error {
	k := d.cfg.Kubernetes
	if !k.Enabled {
		// Pods an earlier daemon held would wait for a classification
		// that no longer comes.
		return d.gate.Unhold()
	}
	rc, name, err := kubeClient(k)
	if err != nil {
		return err
	}
	// controller-runtime and client-go log through their own global
	// loggers; both go to the daemon's.
	log := d.log.With("component", "kubernetes")
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)
	cg := cgroupv2.Manager{Root: d.cfg.CgroupRoot}
	hold := func(on bool) ([]string, error) { return d.holdPods(on, log) }
	ignore := k.IgnoreNamespaces
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" && !slices.Contains(ignore, ns) {
		// An Agent beside the daemon could hold or confine the daemon.
		ignore = append(slices.Clip(ignore), ns)
	}
	c, err := node.New(node.Config{Rest: rc, NodeName: name, Log: log, Hold: hold, HoldControlPlane: k.HoldControlPlane, IgnoreNamespaces: ignore,
		Pods: d.pods, Metrics: node.NewMetrics(d.reg),
		PodCgroup: func(uid string) bool { _, _, err := cg.FindPod(uid); return err == nil }}, d.sessions)
	if err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(context.Background())
	d.onStop(cancel)
	go func() {
		if err := c.Run(kctx); err != nil && kctx.Err() == nil {
			d.log.Error("kubernetes stopped", "err", err)
		}
	}()
	return nil
}

// kubeClient is how this node reaches the API server, and its name.
func kubeClient(k config.Kubernetes) (*rest.Config, string, error) {
	name := k.NodeName
	if name == "" {
		name = os.Getenv("NODE_NAME")
	}
	if name == "" {
		return nil, "", fmt.Errorf("kubernetes.node_name: not set, and $NODE_NAME is empty (the DaemonSet sets it from spec.nodeName)")
	}
	var rc *rest.Config
	var err error
	if k.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: %w", err)
	}
	return rc, name, nil
}

// holdPods makes the kernel hold every pod cgroup made from now on in the
// kubernetes.pod_cgroups that exist, and returns their paths; off, it
// releases every held pod.
func (d *daemon) holdPods(on bool, log *slog.Logger) ([]string, error) {
	var paths, rels []string
	var ids []uint64
	if on {
		rels = d.cfg.Kubernetes.PodCgroups
	}
	for _, rel := range rels {
		p := filepath.Join(d.cfg.CgroupRoot, rel)
		id, err := cgroupv2.ID(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kubernetes.pod_cgroups: %w", err)
		}
		paths, ids = append(paths, p), append(ids, id)
	}
	d.sessions.HoldPods(len(ids) > 0)
	if len(ids) == 0 {
		if err := d.gate.Unhold(); err != nil {
			return nil, err
		}
		if on {
			log.Warn("no pod cgroup parent exists: new pods are not held, and an agent's pod runs unconfined until its session is bound",
				"pod_cgroups", d.cfg.Kubernetes.PodCgroups, "cgroup_root", d.cfg.CgroupRoot)
		}
		return nil, nil
	}
	if err := d.gate.HoldPods(ids); err != nil {
		return nil, fmt.Errorf("kubernetes.pod_cgroups: %w", err)
	}
	// The daemon's own pod, made while an earlier daemon's pinned hold was
	// on, is held like any other: it could not reach the API server to
	// classify itself.
	rel, err := cgroupv2.Of(os.Getpid())
	if err != nil {
		return nil, err
	}
	for p := rel; p != "/" && p != "." && p != ""; p = filepath.Dir(p) {
		if id, err := cgroupv2.ID(filepath.Join(d.cfg.CgroupRoot, p)); err == nil {
			if released, err := d.gate.ReleaseCgroup(id); err != nil {
				return nil, err
			} else if released {
				log.Info("released this daemon's own pod from the hold", "cgroup", p)
			}
		}
	}
	log.Info("holding new pods until classified", "in", paths)
	return paths, nil
}
