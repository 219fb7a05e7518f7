package kerneltest

import (
	"encoding/json"
	"fmt"
	"reflect"
)

// A request travels to the probe as JSON in its environment: a list of
// operations, each named by its type.

type envelope struct {
	Kind string          `json:"kind"`
	Op   json.RawMessage `json:"op"`
}

// kinds are the operations by name, for decoding.
var kinds = map[string]reflect.Type{}

func init() {
	for _, op := range []Op{
		Connect{}, SendUDP{}, ConnectUDP{}, FastOpen{}, Socket{}, Bind{}, Uring{}, VMRead{}, Traceme{}, RecvSocket{}, Netns{}, API{},
		DNSQuery{}, DNSReset{}, Resolve{}, ResolveLoop{}, DNSReplay{}, DialName{}, TLSHello{}, SendTCP{},
		Hold{}, HoldMany{}, Loop{}, Flood{}, ListenTCP{}, UDPSocket{}, UDPSend{}, UDPRecv{},
		ConnectBench{}, UDPBench{}, SyscallBench{}, ExecBench{},
	} {
		t := reflect.TypeOf(op)
		kinds[t.Name()] = t
	}
}

func encodeOp(op Op) ([]byte, error) {
	b, err := json.Marshal(op)
	if err != nil {
		return nil, err
	}
	return json.Marshal(envelope{Kind: reflect.TypeOf(op).Name(), Op: b})
}

func decodeOp(b []byte) (Op, error) {
	var e envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	t, ok := kinds[e.Kind]
	if !ok {
		return nil, fmt.Errorf("unknown operation %q", e.Kind)
	}
	v := reflect.New(t)
	if err := json.Unmarshal(e.Op, v.Interface()); err != nil {
		return nil, fmt.Errorf("%s: %w", e.Kind, err)
	}
	return v.Elem().Interface().(Op), nil
}

func encodeRequest(ops []Op) (string, error) {
	list := make([]json.RawMessage, len(ops))
	for i, op := range ops {
		b, err := encodeOp(op)
		if err != nil {
			return "", err
		}
		list[i] = b
	}
	b, err := json.Marshal(list)
	return string(b), err
}

func decodeRequest(s string) ([]Op, error) {
	var list []json.RawMessage
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		return nil, err
	}
	ops := make([]Op, len(list))
	for i, b := range list {
		op, err := decodeOp(b)
		if err != nil {
			return nil, err
		}
		ops[i] = op
	}
	return ops, nil
}
