package enforcer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/agentfence/agentfence/internal/cgroupv2"
)

// The hostname programs (DNS learning and the SNI check) run on every packet
// of the cgroups they are attached to, so they are attached only where
// sessions with hostname rules have members; the registry decides where
// (session.Registry.hostnameHooks) and keeps those cgroups from nesting.
// Everyone else's packets never enter them. Attachments are counted per
// cgroup and pinned like the gate's links, so that they outlive the daemon.

// hook is the two hostname programs attached to one cgroup.
type hook struct {
	cgid  uint64
	refs  int
	links []link.Link // ingress, egress; nil while detached (benchmarks)
}

type hooks struct {
	mu      sync.Mutex
	byPath  map[string]*hook
	adopted map[uint64]*hook // pinned by an earlier daemon, not yet claimed
}

func (g *Gate) hookDir() string { return filepath.Join(g.linkDir(), "hostnames") }

func (g *Gate) hookPin(cgid uint64, i int) string {
	return filepath.Join(g.hookDir(), fmt.Sprintf("%d-%s", cgid, [...]string{"ingress", "egress"}[i]))
}

func (g *Gate) hookPrograms() []attachment {
	return []attachment{
		{"dns_ingress", g.host.objs.DnsIngress, ebpf.AttachCGroupInetIngress},
		{"sni_egress", g.host.objs.SniEgress, ebpf.AttachCGroupInetEgress},
	}
}

// HookHostnames attaches the hostname programs to a cgroup, or counts one
// more user of an attachment that is already there.
func (g *Gate) HookHostnames(cgroupPath string) error {
	g.hooks.mu.Lock()
	defer g.hooks.mu.Unlock()
	if h := g.hooks.byPath[cgroupPath]; h != nil {
		h.refs++
		return nil
	}
	if g.host == nil {
		return fmt.Errorf("enforcer: hostname programs: %w", g.hostErr)
	}
	cgid, err := cgroupv2.ID(cgroupPath)
	if err != nil {
		return fmt.Errorf("enforcer: hostname programs: %w", err)
	}
	h := g.hooks.adopted[cgid]
	delete(g.hooks.adopted, cgid)
	if h == nil {
		h = &hook{cgid: cgid}
		if err := g.attachHook(h, cgroupPath); err != nil {
			return err
		}
	}
	h.refs = 1
	g.hooks.byPath[cgroupPath] = h
	return nil
}

// UnhookHostnames drops one user of a cgroup's attachment and detaches the
// programs with the last one. A cgroup removed meanwhile took its
// attachment with it; only the pins are left to remove.
func (g *Gate) UnhookHostnames(cgroupPath string) error {
	g.hooks.mu.Lock()
	defer g.hooks.mu.Unlock()
	h := g.hooks.byPath[cgroupPath]
	if h == nil {
		return nil
	}
	if h.refs--; h.refs > 0 {
		return nil
	}
	delete(g.hooks.byPath, cgroupPath)
	return g.dropHook(h)
}

// PruneHostnameHooks detaches what an earlier daemon attached and nobody
// has claimed since Load: call it once every session is restored.
func (g *Gate) PruneHostnameHooks() error {
	g.hooks.mu.Lock()
	defer g.hooks.mu.Unlock()
	var errs []error
	for cgid, h := range g.hooks.adopted {
		errs = append(errs, g.dropHook(h))
		delete(g.hooks.adopted, cgid)
	}
	return errors.Join(errs...)
}

func (g *Gate) attachHook(h *hook, cgroupPath string) error {
	for i, a := range g.hookPrograms() {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.typ, Program: a.prog})
		if err == nil && g.pinPath != "" {
			if err = l.Pin(g.hookPin(h.cgid, i)); err != nil {
				l.Close()
			}
		}
		if err != nil {
			g.dropHook(h)
			return fmt.Errorf("enforcer: attach %s to %s: %w", a.name, cgroupPath, err)
		}
		h.links = append(h.links, l)
	}
	return nil
}

func (g *Gate) dropHook(h *hook) error {
	var errs []error
	for _, l := range h.links {
		if g.pinPath != "" {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, release(l))
	}
	h.links = nil
	return errors.Join(errs...)
}

// adoptHooks takes over the attachments an earlier daemon pinned, with this
// daemon's programs swapped in; those whose cgroup is gone are removed. A
// gate of an older version attached the hostname programs at the root
// under the gate's own link names; that attachment is adopted as the root's.
func (g *Gate) adoptHooks(root string) error {
	if err := os.MkdirAll(g.hookDir(), 0o700); err != nil {
		return fmt.Errorf("enforcer: pin directory: %w", err)
	}
	if rootID, err := cgroupv2.ID(root); err == nil {
		for i, a := range g.hookPrograms() {
			old := filepath.Join(g.linkDir(), a.name)
			if l, err := link.LoadPinnedLink(old, nil); err == nil {
				l.Pin(g.hookPin(rootID, i)) // moves the pin
				l.Close()
			}
		}
	}
	ins, _ := filepath.Glob(filepath.Join(g.hookDir(), "*-ingress"))
	var errs []error
	for _, in := range ins {
		cgid, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(in), "-ingress"), 10, 64)
		if err != nil {
			continue
		}
		h := &hook{cgid: cgid}
		for i, a := range g.hookPrograms() {
			l, err := link.LoadPinnedLink(g.hookPin(cgid, i), nil)
			if err == nil {
				// A link whose cgroup was removed cannot take a program.
				if err = l.Update(a.prog); err != nil {
					l.Unpin()
					l.Close()
				}
			}
			if err != nil {
				break
			}
			h.links = append(h.links, l)
		}
		if len(h.links) < 2 {
			errs = append(errs, g.dropHook(h))
			continue
		}
		g.hooks.adopted[cgid] = h
	}
	return errors.Join(errs...)
}

// reattachHooks attaches the hostname programs again where detach left
// them counted but detached (the benchmarks' unloaded configuration).
func (g *Gate) reattachHooks() error {
	g.hooks.mu.Lock()
	defer g.hooks.mu.Unlock()
	for path, h := range g.hooks.byPath {
		if len(h.links) == 0 {
			if err := g.attachHook(h, path); err != nil {
				return err
			}
		}
	}
	return nil
}

// closeHooks closes this process's handles; pinned attachments stay.
func (g *Gate) closeHooks() {
	g.hooks.mu.Lock()
	defer g.hooks.mu.Unlock()
	for _, h := range g.hooks.byPath {
		for _, l := range h.links {
			if g.pinPath == "" {
				release(l)
			} else {
				l.Close()
			}
		}
		h.links = nil
	}
	for _, h := range g.hooks.adopted {
		for _, l := range h.links {
			l.Close()
		}
	}
	clear(g.hooks.adopted)
}
