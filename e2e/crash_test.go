package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

// The daemon is killed with -9 again and again, at different moments,
// while a session member connects in a loop and records keep coming; each
// time a new daemon starts on the same audit file and state. Afterwards
// the file holds only whole lines, no record twice, and its chain
// verifies across every crash (losses explained by restart gap records).
func TestCrashKill9KeepsTheAuditTrailWhole(t *testing.T) {
	mnt := privtest.BPFFS(t)
	pins := filepath.Join(mnt, "agentfence")
	// The loop's denials would use up any violation budget.
	d := startDaemon(t, "--bpffs-path", pins, "--config", configFile(t, "sessions:\n  drift_action: none\n"))

	allowed := kerneltest.Serve(t, "127.0.0.1:0")
	denied := kerneltest.Serve(t, "127.0.0.1:0")
	s := d.openSession(t, "--intent", "connect through crashes", "--allow", "tcp://"+allowed.String())
	stop := filepath.Join(t.TempDir(), "stop")
	p := kerneltest.Start(t, s.Binding.Cgroup, kerneltest.Options{}, false, kerneltest.Loop{Allowed: allowed, Denied: denied, Stop: stop})
	d.waitRecord(t, "connect", func(r audit.Record) bool { return r.Kind == audit.KindConnect && r.Session.ID == s.ID })

	size := func() int64 {
		st, err := os.Stat(d.audit)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	// Kill once the file has grown by this many bytes since the daemon
	// was up: 0 is at once, while it adopts the pins and redelivers.
	growth := []int64{64 << 10, 0, 1, 256 << 10, 8 << 10, 0, 32 << 10}
	const tornRound = 3
	for round, g := range growth {
		from := size()
		deadline := time.Now().Add(30 * time.Second)
		for size() < from+g {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the file grew by %d of %d bytes in 30s", round, size()-from, g)
			}
			time.Sleep(2 * time.Millisecond)
		}
		d.cmd.Process.Kill()
		d.cmd.Wait()
		if round == tornRound {
			// What a kill in the middle of a write leaves behind, for
			// certain rather than by luck of the timing.
			f, err := os.OpenFile(d.audit, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(`{"schema":"1","seq":`)
			f.Close()
		}
		d.start(t)
		if round == tornRound && !strings.Contains(d.log(), "torn line") {
			t.Errorf("the daemon did not report the torn line it cut off: %s", d.log())
		}
	}
	// The last daemon writes records too before it stops.
	from := len(d.records(t))
	deadline := time.Now().Add(15 * time.Second)
	for n := 0; n == 0; {
		for _, r := range d.records(t)[from:] {
			if r.Kind == audit.KindConnect && r.Session.ID == s.ID {
				n++
			}
		}
		if n == 0 && time.Now().After(deadline) {
			t.Fatal("no connect records after the last restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.WriteFile(stop, nil, 0o600)
	res := p.Next()
	t.Logf("through %d kills: %s %v, first failure %q", len(growth), res, res.Tallies, res.FirstErr)
	a, af, dd, df := loopCounts(t, res)
	if a == 0 || df == 0 || af != 0 || dd != 0 {
		t.Errorf("allowed ok %d, allowed failed %d, denied succeeded %d, denied refused %d", a, af, dd, df)
	}
	d.stop(t)
	un := exec.Command(filepath.Join(d.bin, "agentfenced"), append(d.args, "--uninstall")...)
	if out, err := un.CombinedOutput(); err != nil {
		t.Errorf("uninstall: %v\n%s", err, out)
	}

	data, err := os.ReadFile(d.audit)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		t.Errorf("the file ends in an unterminated line: %q", data[max(len(data)-200, 0):])
	}
	seen := map[uint64]int{}
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		if r.Seq != 0 {
			if prev, ok := seen[r.Seq]; ok {
				t.Errorf("seq %d on lines %d and %d", r.Seq, prev, i+1)
			}
			seen[r.Seq] = i + 1
		}
	}
	rep, err := audit.Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Partial != 0 || rep.Duplicates != 0 {
		t.Fatalf("audit verify across %d kills: %+v %v", len(growth), rep, rep.Problem)
	}
	var gaps []string
	for _, g := range rep.Gaps {
		gaps = append(gaps, fmt.Sprintf("%s:%d", g.Source, g.Count))
	}
	t.Logf("%d records, seq %d..%d, explained gaps %v", rep.Records, rep.FirstSeq, rep.LastSeq, gaps)
	if out, stderr, code := d.cli(t, nil, "audit", "verify", d.audit); code != 0 {
		t.Errorf("agentfence audit verify: %s%s", out, stderr)
	}
}
