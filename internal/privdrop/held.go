package privdrop

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// HeldGate returns the capabilities of the gate set that process pid holds
// in its permitted set, in Gate's order: what a process bound to a session
// (rather than launched by `agentfence run`) can use to get past the gate.
// The permitted set, not the effective one: a process raises permitted
// capabilities into effective at will.
func HeldGate(pid int) ([]Cap, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	prm, err := permitted(status)
	if err != nil {
		return nil, fmt.Errorf("privdrop: /proc/%d/status: %w", pid, err)
	}
	var out []Cap
	for _, c := range Gate {
		if prm&(1<<uint(c)) != 0 {
			out = append(out, c)
		}
	}
	return out, nil
}

// permitted reads the CapPrm line of a /proc/PID/status text.
func permitted(status []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		v, ok := bytes.CutPrefix(sc.Bytes(), []byte("CapPrm:"))
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
		if err != nil {
			return 0, fmt.Errorf("CapPrm %q: %w", bytes.TrimSpace(v), err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("no CapPrm line")
}
