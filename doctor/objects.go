package doctor

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/enforcer/sockdestroy"
	"github.com/agentfence/agentfence/sensor"
	"github.com/agentfence/agentfence/sensor/tlsprobe"
)

// The object checks load the daemon's own BPF objects, without attaching
// them. The feature probes above say why something cannot work; these say
// whether it does: on 5.10 and 6.1 every probe passed while the verifier
// refused the hostname programs.
const (
	CheckObjectGate       = "object/" + enforcer.ObjectGate
	CheckObjectHostnames  = "object/" + enforcer.ObjectHostnames
	CheckObjectTaskLister = "object/" + enforcer.ObjectTaskLister
	CheckObjectProcess    = "object/" + sensor.ObjectProcess
	CheckObjectSockIter   = "object/socket_iterator"
	CheckObjectFamilies   = "object/" + enforcer.ObjectSocketFamilies
	CheckObjectPodHold    = "object/" + enforcer.ObjectPodHold
	CheckObjectTLS        = "object/" + tlsprobe.Object
)

func checkObjects(st *run) []Check {
	vo := st.opts.Objects
	objs := enforcer.VerifyObjects(vo)

	proc := enforcer.ObjectCheck{Name: sensor.ObjectProcess, Fallback: sensor.ProcessFallback}
	// As the daemon loads it (cmd/agentfenced/processes.go: 1 MiB ring).
	if spec, err := sensor.ProcessSpec(sensor.ProcessOptions{RingBufferSize: 1 << 20}); err != nil {
		proc.Err = err
	} else {
		cache := btf.NewCache()
		_, _ = cache.Kernel() // not part of the program's time
		enforcer.VerifySpec(&proc, spec, nil, cache, vo.Break == sensor.ObjectProcess)
	}
	objs = append(objs, proc)

	tls := enforcer.ObjectCheck{Name: tlsprobe.Object, Fallback: tlsprobe.Fallback}
	if spec, err := tlsprobe.Spec(); err != nil {
		tls.Err = err
	} else {
		enforcer.VerifySpec(&tls, spec, nil, btf.NewCache(), vo.Break == tlsprobe.Object)
	}
	objs = append(objs, tls)

	var out []Check
	for _, o := range objs {
		out = append(out, objectCheck(o))
	}
	return append(out, checkSockIterObject())
}

// objectCheck reports one verification load.
func objectCheck(o enforcer.ObjectCheck) Check {
	c := Check{Name: "object/" + o.Name, Gate: o.Required, Duration: o.Duration}
	if o.Required {
		c.Impact = "the daemon cannot start without the " + o.Name
	} else {
		c.Impact = o.Name + " refused: " + o.Fallback
	}
	if o.Err != nil {
		var ve *ebpf.VerifierError
		if errors.As(o.Err, &ve) {
			c.Status = StatusMissing
			c.Detail = fmt.Sprintf("verifier refused it after %s: %v", ms(o.Duration), o.Err)
			return c
		}
		c.Status, c.Detail = classify(o.Err)
		if c.Status == StatusMissing {
			c.Detail = o.Err.Error()
		}
		return c
	}
	c.Status = StatusOK
	progs := fmt.Sprintf("%d programs load", o.Programs)
	if o.Programs == 1 {
		progs = "its program loads"
	}
	c.Detail = fmt.Sprintf("%s; verified in %s", progs, ms(o.Duration))
	if o.Insns > 0 {
		c.Detail += fmt.Sprintf(" (%d insns processed)", o.Insns)
	}
	const refuses = "members' sockets of other families, their attaching to processes outside their session, and in sessions that launch MCP servers any ptrace and the receipt of inet sockets, are refused and recorded"
	why := ""
	if o.LayerErr != nil {
		why = " (the kernel refused the stronger ones: " + o.LayerErr.Error() + ")"
	}
	switch o.Layer {
	case enforcer.FamiliesLSM:
		c.Detail += "; layer bpf_lsm: " + refuses
	case enforcer.FamiliesFmodRet:
		c.Detail += "; layer fmod_ret (the BPF LSM is not active; the same checks modify the return of the kernel's security_* functions)" + why + ": " + refuses
	case enforcer.FamiliesSyscallExit:
		if o.LayerErr == nil {
			why = " (the BPF LSM is not active)"
		}
		c.Detail += "; layer syscall_exit" + why + ": members' sockets of other families are seen at the socket syscall's exit, refusals recorded, a created one quarantines or kills (drift action); `agentfence run` refuses them with seccomp; same-uid ptrace of processes outside the session, and received sockets, are not refused"
	}
	return c
}

// checkSockIterObject sets up socket naming as the daemon does and says
// which path it took.
func checkSockIterObject() Check {
	start := time.Now()
	d := sockdestroy.New()
	took := time.Since(start)
	c := Check{Name: CheckObjectSockIter, Duration: took,
		Impact: "sockets of a revoked session are named through pidfd_getfd (eight system calls a socket), " +
			"or found by sock_diag dumps of the host's whole socket table where pidfd_getfd is missing too"}
	naming := d.Naming()
	d.Close()
	switch {
	case d.Iterator() != nil:
		c.Status = StatusMissing
		if os.Geteuid() != 0 {
			c.Status = StatusUnknown
		}
	default:
		c.Status = StatusOK
	}
	c.Detail = fmt.Sprintf("loaded and probed in %s; sockets named by: %s", ms(took), naming)
	return c
}

// ms prints a duration in milliseconds, the unit verification times come
// in natively (seconds under emulation).
func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}
