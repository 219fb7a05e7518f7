package ocsf

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/agentfence/agentfence/audit"
)

// The golden files pin the mapping: every value of the event a table of
// records maps to, so that a changed field name, class, activity, enum or
// omitted member shows up as a failing test and, once meant, as a diff of
// testdata/golden in review. A deliberate change of output is made in
// ocsf.go (and encode.go for a new member), then written out with
//
//	go test ./audit/ocsf -run TestGolden -update
//
// and the diff read before committing it.
var update = flag.Bool("update", false, "rewrite testdata/golden from the encoder's output")

const goldenDir = "testdata/golden"

// goldenProductVersion is the build version the golden events carry.
const goldenProductVersion = "0.1.0"

type goldenCase struct {
	name string
	rec  audit.Record
}

// goldenDrops are the recordDrops pinned for each kind: those that take a
// branch of its mapping function in ocsf.go. What is common to all kinds
// (process, actor, unmapped) is pinned once, on connect.
var goldenDrops = map[string][]string{
	audit.KindConnect: {
		"no-session", "no-agent", "no-origin", "agent-no-name-id", "no-host-seq-event-actor",
		"no-destination", "no-source", "no-destination-no-source", "no-socket", "socket-not-refused",
		"destination-no-address-no-socket", "destination-tcp-no-hostname", "destination-hostname-only",
		"no-outcome", "outcome-verdict-only",
		"no-process", "process-running-no-parent", "process-no-exe", "process-no-hash-no-container", "no-pod", "pod-uid-only",
		"process-pod-only", "process-container-only-pid-0", "empty-process-only", "kind-event-actor-only",
		"no-mcp", "mcp-server-only",
	},
	audit.KindDNS: {
		"no-destination", "destination-hostname-only", "destination-tcp-no-hostname", "query-no-type-no-hostname",
		"no-session-dns-no-query", "no-outcome", "kind-event-actor-only",
	},
	audit.KindExec: {
		"no-process", "process-running-no-parent", "no-outcome", "no-session", "no-host-seq-event-actor",
		"empty-process-only", "kind-event-actor-only",
	},
	audit.KindSession: {
		"no-session", "session-no-mode-parent", "session-caps-only", "session-no-data", "session-empty-caps",
		"no-process", "no-host-seq-event-actor", "kind-event-actor-only",
	},
	audit.KindMCP: {
		"no-mcp", "no-process", "process-running-no-parent", "no-outcome", "no-session",
		"empty-process-only", "kind-event-actor-only",
	},
	audit.KindGap:     {"no-gap", "gap-zero", "kind-event-actor-only"},
	audit.KindEscape:  {"no-escape", "escape-what-only", "no-process", "no-outcome", "no-host-seq-event-actor", "kind-event-actor-only"},
	"future_kind":     {"no-process", "empty-process-only", "kind-event-actor-only"},
	audit.KindAgent:   {"no-agent", "no-host-seq-event-actor", "kind-event-actor-only"},
	audit.KindInbound: {"no-source", "no-destination"},
	audit.KindSocket:  {"no-socket", "destination-no-address-no-socket"},
	audit.KindHTTP: {
		"no-http", "http-patch", "http-method-lower-case", "http-no-response", "http-unseen-request-line",
		"http-path-only-no-destination", "http-host-no-port-no-path", "http-ipv6-host", "http-bad-port",
		"no-tls-no-credential", "tls-no-socket-credential-key-id", "credential-type-only",
		"no-destination", "destination-tcp-no-hostname", "no-outcome", "no-process", "kind-event-actor-only",
	},
}

// goldenVerdicts are the verdicts pinned for each kind: all of them where
// the mapping reads the verdict, two where only the activity can change,
// one where it is only carried over.
func goldenVerdicts(kind string) []string {
	switch kind {
	case audit.KindConnect, audit.KindDNS, audit.KindExec, audit.KindEscape, audit.KindMCP:
		return allVerdicts
	case audit.KindSendmsg, audit.KindSocket, audit.KindDestroy, audit.KindBind, audit.KindInbound:
		return []string{audit.VerdictAllowed, audit.VerdictDenied}
	case audit.KindHTTP:
		// A call is seen after it happened: allowed, or flagged (a
		// credential used outside its holder).
		return []string{audit.VerdictAllowed, audit.VerdictFlagged}
	}
	return []string{audit.VerdictDenied}
}

// goldenCases returns the cases of each golden file, by file name: the
// records of ocsf_test.go, and per kind a full record with its
// goldenVerdicts, each session event (kind session) and its goldenDrops.
func goldenCases(t *testing.T) map[string][]goldenCase {
	drops := map[string]func(*audit.Record){}
	for _, d := range recordDrops {
		drops[d.name] = d.drop
	}
	files := map[string][]goldenCase{}
	for i, r := range records() {
		verdict := ""
		if r.Outcome != nil {
			verdict = r.Outcome.Verdict
		}
		name := strings.TrimRight(fmt.Sprintf("%02d %s %s %s", i, r.Kind, verdict, r.Event), " ")
		files["records"] = append(files["records"], goldenCase{name, r})
	}
	for _, k := range append(slices.Clone(allKinds), "future_kind") {
		for _, v := range goldenVerdicts(k) {
			files[k] = append(files[k], goldenCase{"verdict=" + v, fullRecord(k, v, "opened", "")})
		}
		if k == audit.KindSession {
			for _, ev := range sessionEvents() {
				files[k] = append(files[k], goldenCase{"event=" + ev, fullRecord(k, audit.VerdictAllowed, ev, "")})
			}
		}
		if k == audit.KindAgent {
			files[k] = append(files[k], goldenCase{"event=retired", fullRecord(k, "", "retired", "")})
		}
		for _, name := range goldenDrops[k] {
			drop, ok := drops[name]
			if !ok {
				t.Fatalf("goldenDrops[%q]: no drop %q in recordDrops", k, name)
			}
			r := fullRecord(k, audit.VerdictDenied, "opened", "")
			drop(&r)
			files[k] = append(files[k], goldenCase{name, r})
		}
	}
	return files
}

// goldenEntry is one case in a golden file. OCSF holds Append's bytes
// indented for reading; compacting them gives back those bytes exactly.
type goldenEntry struct {
	Case string          `json:"case"`
	OCSF json.RawMessage `json:"ocsf"`
}

func TestGolden(t *testing.T) {
	enc := Encoder{ProductVersion: goldenProductVersion}
	files := goldenCases(t)
	for _, file := range slices.Sorted(maps.Keys(files)) {
		path := filepath.Join(goldenDir, file+".json")
		var got []goldenEntry
		for _, c := range files[file] {
			b, err := enc.Append(nil, &c.rec)
			if err != nil {
				t.Fatal(err)
			}
			var ind bytes.Buffer
			if err := json.Indent(&ind, b, "    ", "  "); err != nil {
				t.Fatalf("%s %s: %v", file, c.name, err)
			}
			got = append(got, goldenEntry{c.name, ind.Bytes()})
		}
		if *update {
			writeGolden(t, path, got)
			continue
		}
		want := readGolden(t, path)
		for i, g := range got {
			if i >= len(want) {
				t.Errorf("%s: case %q is not in the file (run with -update)", path, g.Case)
				continue
			}
			w := want[i]
			if w.Case != g.Case {
				t.Errorf("%s: case %d is %q, want %q (run with -update)", path, i, w.Case, g.Case)
				continue
			}
			var wb, gb bytes.Buffer
			if err := json.Compact(&wb, w.OCSF); err != nil {
				t.Fatalf("%s %s: %v", path, w.Case, err)
			}
			if err := json.Compact(&gb, g.OCSF); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gb.Bytes(), wb.Bytes()) {
				t.Errorf("%s %s: the event differs from the golden file:\n%s", path, g.Case, jsonDiff(t, wb.Bytes(), gb.Bytes()))
			}
		}
		if len(want) > len(got) {
			t.Errorf("%s: %d cases more than the table (run with -update)", path, len(want)-len(got))
		}
	}
	if !*update {
		// A file no case writes any more is stale.
		names, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if _, ok := files[strings.TrimSuffix(filepath.Base(n), ".json")]; !ok {
				t.Errorf("%s: no golden case writes it", n)
			}
		}
	}
}

func writeGolden(t *testing.T, path string, entries []goldenEntry) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, e := range entries {
		name, err := json.Marshal(e.Case)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  {\n    \"case\": %s,\n    \"ocsf\": %s\n  }", name, e.OCSF)
		if i < len(entries)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readGolden(t *testing.T, path string) []goldenEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	var entries []goldenEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return entries
}

// jsonDiff lists the members whose values differ between two events, by
// path, so a failure names the field rather than two long lines.
func jsonDiff(t *testing.T, want, got []byte) string {
	t.Helper()
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(path string, w, g any)
	walk = func(path string, w, g any) {
		wm, wok := w.(map[string]any)
		gm, gok := g.(map[string]any)
		if wok && gok {
			keys := slices.Sorted(maps.Keys(wm))
			for k := range gm {
				if _, ok := wm[k]; !ok {
					keys = append(keys, k)
				}
			}
			for _, k := range keys {
				walk(strings.TrimPrefix(path+"."+k, "."), wm[k], gm[k])
			}
			return
		}
		wj, _ := json.Marshal(w)
		gj, _ := json.Marshal(g)
		if !bytes.Equal(wj, gj) {
			out = append(out, fmt.Sprintf("  %s: got %s, want %s", path, gj, wj))
		}
	}
	walk("", w, g)
	if len(out) == 0 {
		// Same values, other bytes: member order or escaping.
		return fmt.Sprintf("  got  %s\n  want %s", got, want)
	}
	return strings.Join(out, "\n")
}
