package main

import (
	"context"
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/kube/node"
)

// startKubernetes follows the cluster's Agents and AgentSessions for the
// pods of this node (kubernetes.enabled). It starts after the API: local
// sessions keep working whatever the API server does.
func (d *daemon) startKubernetes(ctx context.Context) error {
	k := d.cfg.Kubernetes
	if !k.Enabled {
		return nil
	}
	name := k.NodeName
	if name == "" {
		name = os.Getenv("NODE_NAME")
	}
	if name == "" {
		return fmt.Errorf("kubernetes.node_name: not set, and $NODE_NAME is empty (the DaemonSet sets it from spec.nodeName)")
	}
	var rc *rest.Config
	var err error
	if k.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	// controller-runtime and client-go log through their own global
	// loggers; both go to the daemon's.
	log := d.log.With("component", "kubernetes")
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)
	cg := cgroupv2.Manager{Root: d.cfg.CgroupRoot}
	c, err := node.New(node.Config{Rest: rc, NodeName: name, Log: log,
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
