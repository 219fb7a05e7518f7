package enforcer

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
)

// Verification of the daemon's own objects, for `agentfence doctor`: a
// feature probe says a program type or helper exists, but only loading the
// real programs says whether this kernel's verifier accepts them (5.10 and
// 6.1 refused the hostname programs while every probe passed).

// Object names, as ObjectCheck.Name and VerifyOptions.Break spell them.
const (
	ObjectGate      = "gate"
	ObjectHostnames = "hostnames"
	// ObjectSocketFamilies: bpf/boundary.c (boundary.go).
	ObjectSocketFamilies = "socket_families"
	ObjectTaskLister     = "task_lister"
	// ObjectPodHold: bpf/podhold.c (podhold.go).
	ObjectPodHold = "pod_hold"
)

// ObjectCheck is the outcome of loading one BPF object into the kernel
// without attaching it.
type ObjectCheck struct {
	Name string
	// Required: the daemon does not start without this object.
	Required bool
	// Fallback is what the daemon does when the kernel refuses the object.
	Fallback string
	// Programs is how many programs the object holds.
	Programs int
	// Duration is the wall time of loading the programs, nearly all of it
	// in the verifier for the large objects. The object's maps are created
	// beforehand and not counted. A refused object's time includes the
	// second verification cilium/ebpf runs to fetch the log.
	Duration time.Duration
	// Insns is how many instructions the verifier processed, summed over
	// the programs; 0 where the kernel does not say (before 5.16).
	Insns uint32
	// Err is nil when the object loaded. A verifier rejection's message
	// ends with the last lines of the log (see tailVerifierError).
	Err error
	// Layer, for ObjectSocketFamilies, is the layer it would serve as;
	// LayerErr is why not a stronger one the kernel might have taken
	// (nil when there was none to try).
	Layer    FamilyLayer
	LayerErr error
}

// VerifyOptions mirror the Options of Load that change what is verified.
type VerifyOptions struct {
	MaxCgroupDepth uint32
	Hostnames      HostnameOptions
	// Break names an object whose first program is loaded with an
	// instruction the verifier refuses, so tests take the failure path
	// through the real load. Other names (another package's objects)
	// break nothing here.
	Break string
}

// VerifyObjects loads the gate, the hostname programs and the task lister
// as Load would (same variables, the gate's maps shared), attaches nothing,
// and closes everything again.
func VerifyObjects(opts VerifyOptions) []ObjectCheck {
	_ = rlimit.RemoveMemlock() // kernels before 5.11 charge BPF memory to it
	checks := []ObjectCheck{
		{Name: ObjectGate, Required: true},
		{Name: ObjectHostnames, Fallback: "hostname rules are unavailable: sessions with them are refused; address rules still work; a session whose dns mode is scoped or none may send nothing to the DNS port (the gate refuses it, no name can be read)"},
		{Name: ObjectTaskLister, Fallback: "a session's pid-bound processes are found by reading the whole pid binding table (pid table walk)"},
		{Name: ObjectSocketFamilies, Fallback: "sockets of families no cgroup hook sees (packet, XDP, vsock, ...) are refused only by `agentfence run`'s seccomp filter and dropped capabilities, unrecorded; bound members are not watched"},
		{Name: ObjectPodHold, Fallback: "new Kubernetes pods cannot be held at deny until classified: a daemon that follows a cluster (kubernetes.enabled) with pod cgroups to hold does not start its Kubernetes side"},
	}
	// With aggregation, as the daemon loads it by default.
	gate, err := gateSpec(opts.MaxCgroupDepth, opts.Hostnames.DNSPort, true)
	if err != nil {
		for i := range checks {
			checks[i].Err = err
		}
		return checks
	}
	// The other objects use the gate's maps; made here, they do not depend
	// on the gate's programs loading.
	shared, err := createMaps(gate, nil)
	if err != nil {
		for i := range checks {
			checks[i].Err = fmt.Errorf("create the gate's maps: %w", err)
		}
		return checks
	}
	defer closeMaps(shared)
	// Decoded once, so that no object's time includes parsing kernel BTF.
	cache := btf.NewCache()
	_, _ = cache.Kernel()

	VerifySpec(&checks[0], gate, shared, cache, opts.Break == ObjectGate)
	if spec, err := hostnameSpec(opts.Hostnames); err != nil {
		checks[1].Err = err
	} else {
		// The maps both objects define are the gate's (loadHostnames).
		VerifySpec(&checks[1], spec, pick(shared, slices.Collect(maps.Keys(spec.Maps))...), cache, opts.Break == ObjectHostnames)
	}
	if spec, err := loadMembers(); err != nil {
		checks[2].Err = err
	} else {
		VerifySpec(&checks[2], spec, pick(shared, "pid_sessions"), cache, opts.Break == ObjectTaskLister)
	}
	verifyFamilies(&checks[3], shared, cache, opts.Break == ObjectSocketFamilies)
	if spec, err := loadPodhold(); err != nil {
		checks[4].Err = err
	} else {
		VerifySpec(&checks[4], spec, pick(shared, "cgroup_sessions"), cache, opts.Break == ObjectPodHold)
	}
	return checks
}

// verifyFamilies verifies the boundary programs as loadFamilies loads
// them: those of the strongest layer the kernel takes.
func verifyFamilies(c *ObjectCheck, shared map[string]*ebpf.Map, cache *btf.Cache, broken bool) {
	try, _ := tryLayers("")
	var whyNot []error
	for _, layer := range try {
		spec, err := boundarySpec(layer)
		if err != nil {
			c.Err = err
			return
		}
		c.Err = nil
		if VerifySpec(c, spec, pick(shared, slices.Collect(maps.Keys(spec.Maps))...), cache, broken); c.Err == nil {
			c.Layer, c.LayerErr = layer, errors.Join(whyNot...)
			return
		}
		whyNot = append(whyNot, fmt.Errorf("%s: %w", layer, c.Err))
	}
}

// VerifySpec loads every program of spec, timing only that, into c, and
// closes them. shared maps are used as they are; the spec's other maps
// (data sections aside, which carry the variables) are created first.
// With broken, one program is made to fail verification (breakProgram).
func VerifySpec(c *ObjectCheck, spec *ebpf.CollectionSpec, shared map[string]*ebpf.Map, cache *btf.Cache, broken bool) {
	c.Programs = len(spec.Programs)
	if broken {
		breakProgram(spec)
	}
	own, err := createMaps(spec, shared)
	if err != nil {
		c.Err = err
		return
	}
	defer closeMaps(own)
	repl := maps.Clone(own)
	maps.Copy(repl, shared)
	runtime.GC() // parsing BTF left garbage; collect it outside the timed load
	start := time.Now()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl, Cache: cache})
	c.Duration = time.Since(start)
	if err != nil {
		c.Err = tailVerifierError(err)
		return
	}
	defer coll.Close()
	for _, p := range coll.Programs {
		if info, err := p.Info(); err == nil {
			n, _ := info.VerifiedInstructions()
			c.Insns += n
		}
	}
}

// createMaps creates the maps of spec that are not in skip and are not
// data sections (the collection loader fills those from the variables).
// A map of maps whose contents name other maps (agg_maps) is made after
// them, with their descriptors.
func createMaps(spec *ebpf.CollectionSpec, skip map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	out := map[string]*ebpf.Map{}
	var outer []string
	for name, ms := range spec.Maps {
		if _, ok := skip[name]; ok || strings.HasPrefix(name, ".") {
			continue
		}
		if ms.Type == ebpf.ArrayOfMaps || ms.Type == ebpf.HashOfMaps {
			outer = append(outer, name)
			continue
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			closeMaps(out)
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		out[name] = m
	}
	for _, name := range outer {
		ms := spec.Maps[name].Copy()
		for i, kv := range ms.Contents {
			if inner, ok := kv.Value.(string); ok {
				ms.Contents[i].Value = out[inner]
			}
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			closeMaps(out)
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		out[name] = m
	}
	return out, nil
}

func pick(all map[string]*ebpf.Map, names ...string) map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	for _, n := range names {
		if m, ok := all[n]; ok {
			out[n] = m
		}
	}
	return out
}

func closeMaps(ms map[string]*ebpf.Map) {
	for _, m := range ms {
		m.Close()
	}
}

// breakProgram makes the first program of spec (by name) start by reading
// R9, which no program may read before writing it, so the verifier refuses
// it. The function and line info move to the new first instruction, as the
// kernel wants them at offset 0.
func breakProgram(spec *ebpf.CollectionSpec) {
	names := slices.Sorted(maps.Keys(spec.Programs))
	if len(names) == 0 {
		return
	}
	p := spec.Programs[names[0]]
	bad := asm.LoadMem(asm.R0, asm.R9, 0, asm.DWord)
	bad.Metadata, p.Instructions[0].Metadata = p.Instructions[0].Metadata, asm.Metadata{}
	p.Instructions = append(asm.Instructions{bad}, p.Instructions...)
}

// verifierTailLines is how much of a verifier log a report keeps: the
// refused instruction, the reason, and the "processed N insns" summary.
const verifierTailLines = 6

// tailVerifierError shortens a verifier rejection to the last lines of its
// log (a log can run to thousands of lines); errors.As still finds the
// *ebpf.VerifierError. Other errors are returned as they are.
func tailVerifierError(err error) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return err
	}
	// The wrapping names the program ("program dns_ingress: ").
	prefix := strings.TrimSuffix(err.Error(), ve.Error())
	return &tailError{msg: prefix + fmt.Sprintf("%-*v", verifierTailLines, ve), err: err}
}

type tailError struct {
	msg string
	err error
}

func (e *tailError) Error() string { return e.msg }
func (e *tailError) Unwrap() error { return e.err }
