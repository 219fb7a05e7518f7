package audit

import (
	"fmt"
	"time"
)

// sampleRecord returns a realistic connect record; i varies the content.
func sampleRecord(i int) Record {
	return Record{
		Time: time.Date(2026, 3, 1, 12, 0, 0, i*1000, time.UTC),
		Kind: KindConnect, Host: "node-1",
		Session: &Session{ID: fmt.Sprintf("ses_%06d", i%50), Intent: "fix flaky test in repo foo", Mode: "enforce"},
		Agent:   &Agent{ID: "spiffe://corp/agent/coder", Name: "coder", Version: "1.2.3"},
		Origin:  &Origin{Kind: "human", Principal: "alice@example.com"},
		Process: &Process{PID: uint32(1000 + i), PPID: 999, UID: 1000, GID: 1000, Comm: "curl", Exe: "/usr/bin/curl",
			Argv: []string{"curl", "https://api.github.com/repos/foo"}, CgroupID: 4242},
		Destination: &Destination{IP: "140.82.112.6", Port: 443, Protocol: "tcp", Hostname: "api.github.com"},
		Outcome:     &Outcome{Verdict: VerdictAllowed, Rule: "allow https://api.github.com/repos/foo/**"},
	}
}
