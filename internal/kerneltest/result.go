package kerneltest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The outcomes that are no errno.
const (
	OK           = "ok"
	Ready        = "ready"     // a gated probe waits for Proc.Go
	ErrEOF       = "EOF"       // the peer closed the connection
	ErrShort     = "short"     // an answer too short to be one
	ErrBadAnswer = "badanswer" // an answer that does not answer the query
	ErrNone      = "none"      // a resolver's answer without an address
	// ErrNoRights: a message that carried a descriptor arrived without
	// it (MSG_CTRUNC), as when an LSM hook refuses the receipt.
	ErrNoRights = "norights"
)

// Result is the outcome of one operation. Err is OK, the name of the errno
// the operation failed with ("EPERM", "ECONNREFUSED"), one of the Err
// names above, or, for a failure that is none of these, its text. The
// other fields carry what an operation reports besides.
type Result struct {
	PID int    `json:"pid"`
	Err string `json:"err"`
	// Stage names the step that failed, for operations of several.
	Stage string `json:"stage,omitempty"`

	Port    uint16           `json:"port,omitempty"`    // ListenTCP, UDPSocket
	Addr    netip.Addr       `json:"addr,omitzero"`     // Resolve
	Status  int              `json:"status,omitempty"`  // API: the HTTP status
	Field   string           `json:"field,omitempty"`   // API: the field an error names
	Got     []string         `json:"got,omitempty"`     // UDPRecv
	N       int              `json:"n,omitempty"`       // HoldMany; which try failed
	Tallies []map[string]int `json:"tallies,omitempty"` // Loop, ResolveLoop: outcome → count, per target
	// FirstErr is Loop's first failed allowed connect.
	FirstErr string        `json:"first_err,omitempty"`
	Rate     float64       `json:"rate,omitempty"` // Flood, a second
	Wall     time.Duration `json:"wall,omitempty"` // benches, per operation
	CPU      time.Duration `json:"cpu,omitempty"`  // benches, the thread's own
}

// Outcome is Err, prefixed by the failed stage if any: "EPERM",
// "connect:EPERM".
func (r Result) Outcome() string {
	if r.Stage != "" {
		return r.Stage + ":" + r.Err
	}
	return r.Err
}

// String is the outcome and, for Resolve, the address: "ok 127.0.0.1".
func (r Result) String() string {
	if r.Addr.IsValid() {
		return r.Outcome() + " " + r.Addr.String()
	}
	return r.Outcome()
}

// Outcomes are the results' outcomes, in order.
func Outcomes(res []Result) []string {
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r.Outcome()
	}
	return out
}

// ParseResults reads the results a probe wrote on stdout (see Env).
func ParseResults(out string) ([]Result, error) {
	var res []Result
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return res, fmt.Errorf("probe output %q: %w", out, err)
		}
		res = append(res, r)
	}
	return res, nil
}

// result is the Result of an operation that ended with err.
func result(err error) Result { return Result{Err: errName(err)} }

// failed is the Result of stage failing with err.
func failed(stage string, err error) Result { return Result{Err: errName(err), Stage: stage} }

// errName names err the one way every probe does.
func errName(err error) string {
	if err == nil {
		return OK
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
	}
	if errors.Is(err, io.EOF) {
		return ErrEOF
	}
	return err.Error()
}
