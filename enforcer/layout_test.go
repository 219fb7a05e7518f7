package enforcer

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/scope"
)

// The Go types come from the object's BTF, so they match the C layout by
// construction; this pins that the maps were declared with those types, so
// a key or value that does not marshal can never reach a session open.
func TestMapLayouts(t *testing.T) {
	spec, err := loadGate()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		mapName    string
		key, value uintptr
	}{
		{"sessions", 4, unsafe.Sizeof(gateSession{})},
		{"cgroup_sessions", 8, unsafe.Sizeof(gateBinding{})},
		{"pid_sessions", 4, unsafe.Sizeof(gateBinding{})},
		{"proc_exe", 4, unsafe.Sizeof(gateExeId{})},
		{"scope4", unsafe.Sizeof(gateScope4Key{}), unsafe.Sizeof(gateScopeVal{})},
		{"scope6", unsafe.Sizeof(gateScope6Key{}), unsafe.Sizeof(gateScopeVal{})},
		{"exact4", unsafe.Sizeof(gateExact4Key{}), unsafe.Sizeof(gateScopeVal{})},
		{"exact6", unsafe.Sizeof(gateExact6Key{}), unsafe.Sizeof(gateScopeVal{})},
	}
	for _, c := range cases {
		m := spec.Maps[c.mapName]
		if m == nil {
			t.Errorf("map %s missing", c.mapName)
			continue
		}
		if uintptr(m.KeySize) != c.key || uintptr(m.ValueSize) != c.value {
			t.Errorf("map %s: key/value %d/%d bytes, Go types %d/%d", c.mapName, m.KeySize, m.ValueSize, c.key, c.value)
		}
	}
	if got, want := len(gateScopeVal{}.Rules), scope.MaxPortRules; got != want {
		t.Errorf("scope_val holds %d rules, scope.MaxPortRules assumes %d", got, want)
	}
	if EventSize != int(unsafe.Sizeof(gateGateEvent{})) || EventSize%8 != 0 {
		t.Errorf("event size %d", EventSize)
	}
}

// config validates sessions.max_sessions before any map exists, so it
// repeats the session capacity (AF_MAX_SESSIONS, bpf/common.h) as a
// constant; this keeps the two in step. Every map keyed by session slot or
// holding one entry per session has that capacity.
func TestSessionCapacity(t *testing.T) {
	spec, err := loadGate()
	if err != nil {
		t.Fatal(err)
	}
	var maps gateMapSpecs
	if err := spec.Assign(&maps); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ebpf.MapSpec{
		"sessions": maps.Sessions, "cgroup_sessions": maps.CgroupSessions, "inbound_logs": maps.InboundLogs,
	} {
		if m.MaxEntries != config.MaxSessionsLimit+1 { // slot 0 is never used
			t.Errorf("map %s holds %d entries, config.MaxSessionsLimit is %d", name, m.MaxEntries, config.MaxSessionsLimit)
		}
	}
}

// rawStruct must read a kernel record as binary.Read does: the same bytes
// in every member, for records of random bytes.
func TestRawStructIsBinaryRead(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		raw := make([]byte, max(EventSize, HostEventSize))
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		checkRawStruct[gateGateEvent](t, raw)
		checkRawStruct[hostnameHostEvent](t, raw)
	}
}

func checkRawStruct[T any](t *testing.T, raw []byte) {
	t.Helper()
	var want T
	if size := binary.Size(want); size != int(unsafe.Sizeof(want)) {
		t.Fatalf("%T: binary.Read reads %d bytes, the struct is %d", want, size, unsafe.Sizeof(want))
	}
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &want); err != nil {
		t.Fatal(err)
	}
	// Blank padding members binary.Read skips; compare the rest.
	got := rawStruct[T](raw)
	gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range gv.NumField() {
		if gv.Type().Field(i).Name == "_" {
			continue
		}
		if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			t.Fatalf("%T.%s: %v, binary.Read %v", got, gv.Type().Field(i).Name, gv.Field(i), wv.Field(i))
		}
	}
}

// BenchmarkDecodeEvent is the first step of the daemon's record path:
// a gate event as the ring buffer hands it over, decoded.
func BenchmarkDecodeEvent(b *testing.B) {
	raw := make([]byte, EventSize)
	e := gateGateEvent{Pid: 4242, Tid: 4242, Family: 4, Port: 443, Hook: uint8(HookConnect4)}
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&e)), EventSize))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEvent(raw); err != nil {
			b.Fatal(err)
		}
	}
}
