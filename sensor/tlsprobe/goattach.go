//go:build linux

package tlsprobe

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/sensor"
)

// attachGo places the crypto/tls probes in the Go executable ex, which g
// describes and st names, after giving the kernel the executable's
// offsets, keyed as bpf/tls_go.h finds them: the inode of the task's
// exe_file and its superblock's device in the kernel's encoding.
func (p *Probes) attachGo(ex *link.Executable, g *goTLS, st *unix.Stat_t) (_ []link.Link, _ *tlsGoExe, err error) {
	key := &tlsGoExe{Ino: st.Ino, Dev: sensor.KernelDev(st.Dev)}
	val := tlsGoOffsets{Conn: g.offsets.Conn, Fd: g.offsets.FD, Sysfd: g.offsets.Sysfd}
	if err := p.objs.GoConnOffsets.Put(key, &val); err != nil {
		return nil, nil, fmt.Errorf("go offsets: %w", err)
	}
	var links []link.Link
	defer func() {
		if err != nil {
			p.release(attached{links: links, goExe: key})
		}
	}()
	probe := func(addr uint64, prog *ebpf.Program) error {
		// Address is a file offset: it bypasses the symbol table, which a
		// stripped binary does not have.
		l, err := ex.Uprobe("", prog, &link.UprobeOptions{Address: addr})
		if err != nil {
			return fmt.Errorf("uprobe at %#x: %w", addr, err)
		}
		links = append(links, l)
		return nil
	}
	// The RET probes go first: a Read entered before they are placed
	// would leave its entry to age out of the LRU.
	for _, ret := range g.readRets {
		if err := probe(ret, p.objs.AfGoTlsReadRet); err != nil {
			return nil, nil, err
		}
	}
	for addr, prog := range map[uint64]*ebpf.Program{g.write: p.objs.AfGoTlsWrite, g.read: p.objs.AfGoTlsRead, g.close: p.objs.AfGoTlsClose} {
		if err := probe(addr, prog); err != nil {
			return nil, nil, err
		}
	}
	return links, key, nil
}
