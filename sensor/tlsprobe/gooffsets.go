//go:build linux

package tlsprobe

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
)

// goOffsets are the byte offsets on the path from a *tls.Conn to its
// socket's descriptor (bpf/tls_go.h's go_offsets).
type goOffsets struct {
	Conn  uint32 // crypto/tls.Conn.conn, a net.Conn
	FD    uint32 // net.TCPConn.conn + net.conn.fd, a *net.netFD
	Sysfd uint32 // net.netFD.pfd + internal/poll.FD.Sysfd, an int
}

// goLayouts are the offsets by Go 1.x minor version, for binaries without
// DWARF (-w). They have not moved since the register ABI: tls.Conn starts
// with conn, net.TCPConn with its conn, net.conn with fd, net.netFD with
// pfd, and poll.FD's Sysfd follows its 16-byte fdMutex. The newest entry
// is checked against the local toolchain's DWARF (TestOffsetsTableMatchesDWARF);
// a version past the table is not guessed at.
var goLayouts = func() map[int]goOffsets {
	m := map[int]goOffsets{}
	for minor := 17; minor <= 26; minor++ {
		m[minor] = goOffsets{Conn: 0, FD: 0, Sysfd: 16}
	}
	return m
}()

// goFields are the struct fields the path goes through, by type.
var goFields = map[string]string{
	"crypto/tls.Conn":  "conn",
	"net.TCPConn":      "conn",
	"net.conn":         "fd",
	"net.netFD":        "pfd",
	"internal/poll.FD": "Sysfd",
}

// connOffsets returns the offsets from the binary's DWARF, or from the
// table by version when it has none, and whether DWARF gave them.
func connOffsets(f *elf.File, minor int) (goOffsets, bool, error) {
	if d, err := readDWARF(f); err == nil {
		if o, err := dwarfOffsets(d); err == nil {
			return o, true, nil
		}
	}
	if o, ok := goLayouts[minor]; ok {
		return o, false, nil
	}
	return goOffsets{}, false, fmt.Errorf("no offsets (no DWARF; Go 1.%d is not in the table)", minor)
}

// dwarfOffsets reads the fields of goFields from d. Go's linker puts
// every type in the runtime package's unit, so that unit is read first:
// the walk through the units before it, each function's entries one by
// one (Go writes no sibling links), took most of the time for a 68 MB
// test binary. The other units are read only if it lacks one.
func dwarfOffsets(d *dwarf.Data) (goOffsets, error) {
	o, err := dwarfOffsetsIn(d, "runtime")
	if err != nil {
		o, err = dwarfOffsetsIn(d, "")
	}
	return o, err
}

// dwarfOffsetsIn reads the fields of goFields from the unit named, or
// from every unit for "".
func dwarfOffsetsIn(d *dwarf.Data, unit string) (goOffsets, error) {
	found := map[string]int64{}
	r := d.Reader()
	for len(found) < len(goFields) {
		e, err := r.Next()
		if err != nil {
			return goOffsets{}, err
		}
		if e == nil {
			break
		}
		if e.Tag == dwarf.TagCompileUnit {
			if name, _ := e.Val(dwarf.AttrName).(string); unit != "" && name != unit {
				r.SkipChildren() // to the next unit, without reading this one
			}
			continue
		}
		if e.Tag != dwarf.TagStructType {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		field, want := goFields[name]
		if _, dup := found[name]; !want || dup || !e.Children {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		for {
			m, err := r.Next()
			if err != nil {
				return goOffsets{}, err
			}
			if m == nil || m.Tag == 0 {
				break
			}
			if m.Children {
				r.SkipChildren()
			}
			if n, _ := m.Val(dwarf.AttrName).(string); m.Tag == dwarf.TagMember && n == field {
				if off, ok := m.Val(dwarf.AttrDataMemberLoc).(int64); ok {
					found[name] = off
				}
			}
		}
	}
	for name, field := range goFields {
		if _, ok := found[name]; !ok {
			return goOffsets{}, fmt.Errorf("DWARF has no %s.%s", name, field)
		}
	}
	return goOffsets{
		Conn:  uint32(found["crypto/tls.Conn"]),
		FD:    uint32(found["net.TCPConn"] + found["net.conn"]),
		Sysfd: uint32(found["net.netFD"] + found["internal/poll.FD"]),
	}, nil
}
