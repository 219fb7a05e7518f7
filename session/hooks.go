package session

import (
	"errors"
	"slices"

	"github.com/agentfence/agentfence/scope"
)

// The hostname programs must see the packets of every member of a session
// with hostname rules, and see each packet once: a cgroup's packets also
// run its ancestors' programs, and two runs would learn and record every
// answer twice. So the hooked cgroups never nest:
//
//   - while any such session has processes bound by pid (they may live in
//     any cgroup), only the root is hooked;
//   - else each such session's cgroup, unless an ancestor session has
//     hostname rules too (a child's hostname rules lie within its parent's,
//     so its cgroup is then below a hooked one), and its container's cgroup.

// hostnameHooks lists the cgroups e itself needs hooked.
func (r *Registry) hostnameHooks(e *entry) []string {
	if r.rootHooked || !hasHostnames(e.rules) {
		return nil
	}
	var out []string
	if !r.parentHasHostnames(e) {
		out = append(out, e.Binding.Cgroup)
	}
	if e.Binding.ContainerCgroup != "" {
		out = append(out, e.Binding.ContainerCgroup)
	}
	return out
}

func (r *Registry) parentHasHostnames(e *entry) bool {
	for p := r.byID[e.Parent]; p != nil; p = r.byID[p.Parent] {
		if hasHostnames(p.rules) {
			return true
		}
	}
	return false
}

// needsRoot reports whether e alone calls for the root hook.
func needsRoot(e *entry) bool {
	return hasHostnames(e.rules) && (len(e.Binding.PIDs) > 0 || e.escaped)
}

// hookRoot hooks or unhooks the root as the open sessions need, moving the
// per-session hooks out of the way or back. The new hooks go in before the
// old come out: for a moment some packets are seen twice, never none.
func (r *Registry) hookRoot() error {
	need := false
	for _, e := range r.byID {
		if need = needsRoot(e); need {
			break
		}
	}
	if need == r.rootHooked {
		return nil
	}
	var errs []error
	if need {
		if err := r.kernel.HookHostnames(r.cfg.CgroupRoot); err != nil {
			return err
		}
		r.rootHooked = true
		for _, e := range r.byID {
			errs = append(errs, r.hook(e, nil))
		}
		return errors.Join(errs...)
	}
	r.rootHooked = false
	for _, e := range r.byID {
		errs = append(errs, r.hook(e, r.hostnameHooks(e)))
	}
	return errors.Join(append(errs, r.kernel.UnhookHostnames(r.cfg.CgroupRoot))...)
}

// hook attaches and detaches the hostname programs until e's hooks are
// exactly want.
func (r *Registry) hook(e *entry, want []string) error {
	var errs []error
	kept := e.hooks[:0]
	for _, p := range e.hooks {
		if slices.Contains(want, p) {
			kept = append(kept, p)
		} else {
			errs = append(errs, r.kernel.UnhookHostnames(p))
		}
	}
	e.hooks = kept
	for _, p := range want {
		if slices.Contains(e.hooks, p) {
			continue
		}
		if err := r.kernel.HookHostnames(p); err != nil {
			errs = append(errs, err)
			continue
		}
		e.hooks = append(e.hooks, p)
	}
	return errors.Join(errs...)
}

func hasHostnames(rules []scope.Rule) bool {
	return slices.ContainsFunc(rules, func(x scope.Rule) bool { return x.Host != "" })
}
