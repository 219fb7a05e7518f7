//go:build linux

package tlsprobe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/ringreader"
	"github.com/agentfence/agentfence/internal/ringsize"
	"github.com/agentfence/agentfence/sensor"
)

// Options are the gate's maps the probes share, so that membership is
// exactly the gate's.
type Options struct {
	Sessions, CgroupSessions, PidSessions, GateEvents, GateStats *ebpf.Map
	// ProcExe is the gate's tgid → executable map, by which the probes
	// find the processes Watch names.
	ProcExe     *ebpf.Map
	KernelTypes *btf.Spec
	// PollInterval bounds how long an event waits in the ring (default
	// 10 ms).
	PollInterval time.Duration
}

// Probes are the loaded TLS programs and the files they are attached to.
type Probes struct {
	objs    tlsObjects
	sys     link.Link
	rd      *ringreader.Reader
	procExe *ebpf.Map

	mu    sync.Mutex
	files map[fileID]attached
}

// fileID is a file by identity: a uprobe is placed on the inode, which
// several paths may name (/lib and /usr/lib, /proc/PID/exe).
type fileID struct{ dev, ino uint64 }

type attached struct {
	path  string
	stack string // StackOpenSSL, StackGo
	links []link.Link
	goExe *tlsGoExe // Go: the executable's entry in go_conn_offsets
}

// Load loads bpf/tls.c. Nothing is attached until Attach names a file.
func Load(opts Options) (_ *Probes, err error) {
	spec, err := loadTls()
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{"sessions": opts.Sessions, "cgroup_sessions": opts.CgroupSessions,
		"pid_sessions": opts.PidSessions, "gate_events": opts.GateEvents, "gate_stats": opts.GateStats, "proc_exe": opts.ProcExe} {
		if m == nil {
			return nil, fmt.Errorf("tls probes: the gate's %s map is required", name)
		}
		repl[name] = m
	}
	ringsize.FromReplacements(spec, repl)
	p := &Probes{files: map[fileID]attached{}, procExe: opts.ProcExe}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err = spec.LoadAndAssign(&p.objs, &ebpf.CollectionOptions{MapReplacements: repl,
		Programs: ebpf.ProgramOptions{KernelTypes: opts.KernelTypes}}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load tls probes: %+v", verr)
		}
		return nil, fmt.Errorf("load tls probes: %w", err)
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = 10 * time.Millisecond
	}
	if p.rd, err = ringreader.New(p.objs.TlsEvents, poll); err != nil {
		return nil, fmt.Errorf("open tls_events reader: %w", err)
	}
	return p, nil
}

// MaxWatched bounds the executables Watch takes at once.
const MaxWatched = int(tlsAfTlsWatchedAF_TLS_WATCHED_MAX)

// exeKey is exe as bpf/common.h's struct exe_id.
func exeKey(exe sensor.ExeID) tlsExeId { return tlsExeId{Ino: exe.Ino, Dev: exe.Dev} }

// Watch has the probes read the calls of processes outside sessions that
// run exe (from their exec on, or their fork of one that did), as they read
// members'. Their events are Watched.
func (p *Probes) Watch(exe sensor.ExeID) error {
	if err := p.objs.TlsWatch.Put(exeKey(exe), uint8(1)); err != nil {
		return fmt.Errorf("tls probes: watch %d:%d: %w", exe.Dev, exe.Ino, err)
	}
	return nil
}

// Adopt enters a process that started before the process programs ran,
// which they know of only from its next exec or fork, as running exe: so
// Watch finds it. What the programs entered since stays.
func (p *Probes) Adopt(tgid uint32, exe sensor.ExeID) error {
	err := p.procExe.Update(tgid, exeKey(exe), ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("tls probes: adopt %d: %w", tgid, err)
	}
	return nil
}

// Watching lists the executables Watch named (and Unwatch did not take
// back).
func (p *Probes) Watching() ([]sensor.ExeID, error) {
	var (
		k   tlsExeId
		v   uint8
		out []sensor.ExeID
	)
	it := p.objs.TlsWatch.Iterate()
	for it.Next(&k, &v) {
		out = append(out, sensor.ExeID{Ino: k.Ino, Dev: k.Dev})
	}
	return out, it.Err()
}

// Unwatch undoes Watch.
func (p *Probes) Unwatch(exe sensor.ExeID) error {
	if err := p.objs.TlsWatch.Delete(exeKey(exe)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("tls probes: unwatch %d:%d: %w", exe.Dev, exe.Ino, err)
	}
	return nil
}

// opensslFuncs are the functions probed in an OpenSSL.
var opensslFuncs = []string{"SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex", "SSL_free"}

// symbols are the functions probed in an OpenSSL (opensslFuncs), with
// their entry programs; each but SSL_free also gets the shared return
// probe.
func (p *Probes) symbols() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		"SSL_write":    p.objs.AfSslWrite,
		"SSL_write_ex": p.objs.AfSslWriteEx,
		"SSL_read":     p.objs.AfSslRead,
		"SSL_read_ex":  p.objs.AfSslReadEx,
		"SSL_free":     p.objs.AfSslFree,
	}
}

// ErrNoTLS is returned by Attach for a file with no TLS API the probes
// read: neither OpenSSL's SSL_write and SSL_read nor Go's crypto/tls.
var ErrNoTLS = errors.New("no TLS API the probes read (OpenSSL, Go crypto/tls)")

// Stacks the probes read, as AttachExecutable names them.
const (
	StackOpenSSL = "openssl"
	// StackGo (uncovered.go) when the executable is Go's crypto/tls.
)

// Attach probes the OpenSSL API in the file at path (libssl, or an
// executable that carries its own OpenSSL, such as node), or the
// crypto/tls of a Go executable, for every process that maps it, now or
// later. Attaching a file twice does nothing.
func (p *Probes) Attach(path string) error {
	_, err := p.attach(path, path)
	return err
}

// AttachExecutable is Attach for a file already open, named name in errors
// and in Attached (an executable found through a process that may exit
// before the probes are placed), and says which stack was probed:
// StackOpenSSL or StackGo. A Go executable whose crypto/tls cannot be
// probed returns a *GoError, which is an ErrNoTLS.
func (p *Probes) AttachExecutable(f *os.File, name string) (string, error) {
	return p.attach(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), name)
}

// Probed says whether the open file is probed already.
func (p *Probes) Probed(f *os.File) bool {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, done := p.files[fileID{st.Dev, st.Ino}]
	return done
}

// attach opens path and reports it as name.
func (p *Probes) attach(path, name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	id := fileID{st.Dev, st.Ino}
	p.mu.Lock()
	prev, done := p.files[id]
	p.mu.Unlock()
	if done {
		return prev.stack, nil
	}
	have, err := exportedFuncs(path, opensslFuncs...)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	a := attached{path: name, stack: StackOpenSSL}
	_, write := have["SSL_write"]
	_, read := have["SSL_read"]
	if !write || !read {
		g, err := inspectGo(path)
		if errors.Is(err, errNotGoTLS) {
			return "", fmt.Errorf("%s: %w", name, ErrNoTLS)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		a.stack = StackGo
		if a.links, a.goExe, err = p.attachGo(ex, g, &st); err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
	} else if a.links, err = p.attachOpenSSL(ex, have); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Only OpenSSL learns its socket from system calls.
	if p.sys == nil && a.stack == StackOpenSSL {
		sys, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: p.objs.AfTlsSysEnter})
		if err != nil {
			p.release(a)
			return "", fmt.Errorf("attach sys_enter: %w", err)
		}
		p.sys = sys
	}
	if _, raced := p.files[id]; raced {
		p.release(a)
		return a.stack, nil
	}
	p.files[id] = a
	return a.stack, nil
}

// attachOpenSSL places the OpenSSL probes in ex, whose exported functions
// are have, by file offset: given one, cilium/ebpf does not read the
// file's symbols again.
func (p *Probes) attachOpenSSL(ex *link.Executable, have map[string]uint64) ([]link.Link, error) {
	var links []link.Link
	fail := func(err error) ([]link.Link, error) {
		for _, l := range links {
			l.Close()
		}
		return nil, err
	}
	for sym, prog := range p.symbols() {
		off, ok := have[sym]
		if !ok {
			continue // SSL_read_ex and SSL_write_ex came with OpenSSL 1.1.1
		}
		at := &link.UprobeOptions{Address: off}
		l, err := ex.Uprobe(sym, prog, at)
		if err != nil {
			return fail(err)
		}
		links = append(links, l)
		if sym == "SSL_free" {
			continue
		}
		if l, err = ex.Uretprobe(sym, p.objs.AfSslReturn, at); err != nil {
			return fail(err)
		}
		links = append(links, l)
	}
	return links, nil
}

// release undoes what attach placed for a file.
func (p *Probes) release(a attached) {
	for _, l := range a.links {
		l.Close()
	}
	if a.goExe != nil {
		p.objs.GoConnOffsets.Delete(a.goExe)
	}
}

// Attached lists the files probed.
func (p *Probes) Attached() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.files))
	for _, f := range p.files {
		out = append(out, f.path)
	}
	return out
}

// Run hands every event to handle until ctx is done or the probes are
// closed. A record that cannot be decoded is reported through bad.
func (p *Probes) Run(ctx context.Context, handle func(Event), bad func(error)) error {
	return p.rd.Run(ctx, func(b []byte) {
		ev, err := decode(b)
		if err != nil {
			bad(err)
			return
		}
		handle(ev)
	})
}

// Sync returns once every event submitted before the call was handled.
func (p *Probes) Sync(ctx context.Context) { p.rd.Sync(ctx) }

// Lost is the number of events the ring had no room for.
func (p *Probes) Lost() (uint64, error) {
	var perCPU []uint64
	if err := p.objs.TlsLost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Detach removes every probe; the programs stay loaded for the next
// Attach.
func (p *Probes) Detach() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, f := range p.files {
		p.release(f)
		delete(p.files, id)
	}
	if p.sys != nil {
		p.sys.Close()
		p.sys = nil
	}
}

// Close detaches everything and releases the programs and maps.
func (p *Probes) Close() error {
	p.Detach()
	if p.rd != nil {
		p.rd.Close()
	}
	return p.objs.Close()
}
