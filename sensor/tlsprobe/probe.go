//go:build linux

package tlsprobe

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/internal/ringreader"
)

// Op is what a probed call did.
type Op uint8

const (
	OpWrite = Op(tlsAfTlsOpAF_TLS_WRITE) // SSL_write, SSL_write_ex: the client sent
	OpRead  = Op(tlsAfTlsOpAF_TLS_READ)  // SSL_read, SSL_read_ex: it received
	OpFree  = Op(tlsAfTlsOpAF_TLS_FREE)  // SSL_free: the connection ended
)

// Event is one probed call of a session member.
type Event struct {
	BootNS uint64
	// Conn names the connection within the process (the SSL object).
	Conn     uint64
	PID, TID uint32
	Slot     uint32
	Gen      uint64
	Op       Op
	// Size is the bytes the call moved; Data the first of them (at most
	// 8 KiB less one byte), a copy the caller may keep.
	Size uint32
	Data []byte
	// FD and Peer are the socket the connection was seen on (FD -1 and
	// Peer invalid until the library made a system call on it inside a
	// probed call), Cookie its cookie (0: none was ever made).
	FD     int32
	Peer   netip.AddrPort
	Cookie uint64
	Comm   string
}

// headerSize is where tls_event's data starts (layout_test.go pins it to
// the generated type).
const headerSize = 92

// decode reads a tls_event as the ring holds it: the header and the
// captured bytes only.
func decode(b []byte) (Event, error) {
	if len(b) < headerSize {
		return Event{}, fmt.Errorf("tls event of %d bytes, want at least %d", len(b), headerSize)
	}
	le := binary.NativeEndian
	ev := Event{
		BootNS: le.Uint64(b[0:]),
		Conn:   le.Uint64(b[8:]),
		Cookie: le.Uint64(b[16:]),
		Gen:    le.Uint64(b[24:]),
		Slot:   le.Uint32(b[32:]),
		PID:    le.Uint32(b[36:]),
		TID:    le.Uint32(b[40:]),
		Size:   le.Uint32(b[44:]),
		FD:     int32(le.Uint32(b[52:])),
		Op:     Op(b[56]),
	}
	captured := int(le.Uint32(b[48:]))
	if captured > len(b)-headerSize || uint32(captured) > ev.Size && ev.Op != OpFree {
		return Event{}, fmt.Errorf("tls event says %d bytes captured of %d, carries %d", captured, ev.Size, len(b)-headerSize)
	}
	port := binary.BigEndian.Uint16(b[58:])
	switch b[57] {
	case unix.AF_INET:
		ev.Peer = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[60:64])), port)
	case unix.AF_INET6:
		ev.Peer = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[60:76])), port)
	}
	comm := b[76:92]
	for i, c := range comm {
		if c == 0 {
			comm = comm[:i]
			break
		}
	}
	ev.Comm = string(comm)
	ev.Data = append([]byte(nil), b[headerSize:headerSize+captured]...)
	return ev, nil
}

// Options are the gate's maps the probes share, so that membership is
// exactly the gate's.
type Options struct {
	Sessions, CgroupSessions, PidSessions, GateEvents, GateStats *ebpf.Map
	KernelTypes                                                  *btf.Spec
	// PollInterval bounds how long an event waits in the ring (default
	// 10 ms).
	PollInterval time.Duration
}

// Probes are the loaded TLS programs and the files they are attached to.
type Probes struct {
	objs tlsObjects
	sys  link.Link
	rd   *ringreader.Reader

	mu    sync.Mutex
	files map[fileID]attached
}

// fileID is a file by identity: a uprobe is placed on the inode, which
// several paths may name (/lib and /usr/lib, /proc/PID/exe).
type fileID struct{ dev, ino uint64 }

type attached struct {
	path  string
	links []link.Link
}

// Load loads bpf/tls.c. Nothing is attached until Attach names a file.
func Load(opts Options) (_ *Probes, err error) {
	spec, err := loadTls()
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{"sessions": opts.Sessions, "cgroup_sessions": opts.CgroupSessions,
		"pid_sessions": opts.PidSessions, "gate_events": opts.GateEvents, "gate_stats": opts.GateStats} {
		if m == nil {
			return nil, fmt.Errorf("tls probes: the gate's %s map is required", name)
		}
		repl[name] = m
	}
	p := &Probes{files: map[fileID]attached{}}
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

// symbols are the functions probed in an OpenSSL, with their entry
// programs; each but SSL_free also gets the shared return probe.
func (p *Probes) symbols() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		"SSL_write":    p.objs.AfSslWrite,
		"SSL_write_ex": p.objs.AfSslWriteEx,
		"SSL_read":     p.objs.AfSslRead,
		"SSL_read_ex":  p.objs.AfSslReadEx,
		"SSL_free":     p.objs.AfSslFree,
	}
}

// ErrNoTLS is returned by Attach for a file that exports no OpenSSL API.
var ErrNoTLS = errors.New("no OpenSSL symbols (SSL_write, SSL_read)")

// Attach probes the OpenSSL API in the file at path (libssl, or an
// executable that carries its own OpenSSL, such as node) for every
// process that maps it, now or later. Attaching a file twice does nothing.
func (p *Probes) Attach(path string) error { return p.attach(path, path) }

// AttachFile is Attach for a file already open, named name in errors and
// in Attached: an executable found through a process that may exit before
// the probes are placed.
func (p *Probes) AttachFile(f *os.File, name string) error {
	return p.attach(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), name)
}

// attach opens path and reports it as name.
func (p *Probes) attach(path, name string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	id := fileID{st.Dev, st.Ino}
	p.mu.Lock()
	_, done := p.files[id]
	p.mu.Unlock()
	if done {
		return nil
	}
	have, err := exported(path)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if !have["SSL_write"] || !have["SSL_read"] {
		return fmt.Errorf("%s: %w", name, ErrNoTLS)
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var links []link.Link
	fail := func(err error) error {
		for _, l := range links {
			l.Close()
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	for sym, prog := range p.symbols() {
		if !have[sym] {
			continue // SSL_read_ex and SSL_write_ex came with OpenSSL 1.1.1
		}
		l, err := ex.Uprobe(sym, prog, nil)
		if err != nil {
			return fail(err)
		}
		links = append(links, l)
		if sym == "SSL_free" {
			continue
		}
		if l, err = ex.Uretprobe(sym, p.objs.AfSslReturn, nil); err != nil {
			return fail(err)
		}
		links = append(links, l)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sys == nil {
		sys, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: p.objs.AfTlsSysEnter})
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return fmt.Errorf("attach sys_enter: %w", err)
		}
		p.sys = sys
	}
	if _, raced := p.files[id]; raced {
		for _, l := range links {
			l.Close()
		}
		return nil
	}
	p.files[id] = attached{name, links}
	return nil
}

// exported lists the dynamic symbols a file defines (uprobes need an
// address in the file, which an import does not have).
func exported(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, err
	}
	have := map[string]bool{}
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			have[s.Name] = true
		}
	}
	return have, nil
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
		for _, l := range f.links {
			l.Close()
		}
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
