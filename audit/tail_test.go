package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer lets the test read what a following Tail has written so far.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	c, _ := OpenChain("")
	if err := os.WriteFile(path, join(chainLines(t, c, 2)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Tail(context.Background(), path, &out, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %q", out.String())
	}
	for _, want := range []string{"2026-03-01T12:00:00.000Z", "#1", "connect", "allowed", "session=ses_000000", `intent="fix flaky test in repo foo"`, "pid=1000 comm=curl", "-> api.github.com/140.82.112.6:443/tcp"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line %q lacks %q", lines[0], want)
		}
	}

	// Follow: records appended later show up; cancel ends Tail.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fo syncBuffer
	done := make(chan error, 1)
	go func() { done <- Tail(ctx, path, &fo, true) }()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(join(chainLines(t, c, 1)))
	f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(fo.String(), "#3 ") {
		if time.Now().After(deadline) {
			t.Fatalf("followed output never showed seq 3: %q", fo.String())
		}
		time.Sleep(20 * time.Millisecond) // polling a bounded deadline
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A record written to the file just before it is rotated away is still
// read, before the records of the new file.
func TestFollowReadsTheRotatedFileToItsEnd(t *testing.T) {
	path, _, lines, done := follow(t, "a\n", 50*time.Millisecond, "c")
	if got := <-lines; got != "a" {
		t.Fatalf("first line %q", got)
	}
	// Between two polls: one more line, the rotation, a new file.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("b\n")
	f.Close()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(lines)
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	if strings.Join(got, ",") != "b,c" {
		t.Errorf("after the rotation Follow passed %q, want b then c", got)
	}
}

// Follow passes complete lines only: the bytes after the last '\n' are a
// line being written, passed once its '\n' arrives. If instead the torn
// tail is cut off and other lines are written in its place (a restarted
// daemon repairing the file), the held-back bytes are dropped.
func TestFollowHoldsBackAPartialLine(t *testing.T) {
	path, ctx, lines, done := follow(t, "a\nbb", 10*time.Millisecond, "end")
	appendTo := func(s string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-ctx.Done():
			t.Fatal("no line")
		}
		return ""
	}
	if got := next(); got != "a" {
		t.Fatalf("first line %q", got)
	}
	appendTo("b\n")
	if got := next(); got != "bbb" {
		t.Fatalf("completed line %q, want bbb", got)
	}
	// A torn tail, read in the same write as the line before it.
	appendTo("c\n{\"torn")
	if got := next(); got != "c" {
		t.Fatalf("line %q, want c", got)
	}
	if err := os.Truncate(path, int64(len("a\nbbb\nc\n"))); err != nil {
		t.Fatal(err)
	}
	appendTo("a longer line after the cut\nend\n")
	if got := next(); got != "a longer line after the cut" {
		t.Fatalf("after the repair: %q", got)
	}
	if got := next(); got != "end" {
		t.Fatalf("last line %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Without follow, an unterminated last line is shown only if it is a whole
// record; a torn one is not a record yet.
func TestTailSkipsATornLastLine(t *testing.T) {
	c, _ := OpenChain("")
	lines := chainLines(t, c, 2)
	for _, tc := range []struct {
		name string
		data []byte
		want int
	}{
		{"torn", append(join(lines[:1]), lines[1][:40]...), 1},
		{"whole record without its newline", append(join(lines[:1]), lines[1]...), 2},
	} {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		os.WriteFile(path, tc.data, 0o600)
		var out bytes.Buffer
		if err := Tail(context.Background(), path, &out, false); err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(got) != tc.want || strings.Contains(out.String(), "??") {
			t.Errorf("%s: %q", tc.name, out.String())
		}
	}
}

// follow writes initial to a new audit file and follows it in the
// background until the line stop; each line goes to lines, Follow's result
// to done. The context ends with the test, or after 10 s.
func follow(t *testing.T, initial string, poll time.Duration, stop string) (string, context.Context, chan string, chan error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(initial), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	lines := make(chan string, 8)
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, poll, func(l []byte) bool {
			lines <- string(l)
			return string(l) != stop
		})
	}()
	return path, ctx, lines, done
}

// An http record's line says what was called and with which credential;
// a tls_uncovered one why its stack is not read.
func TestFormatHumanHTTP(t *testing.T) {
	h := FormatHuman(&Record{Seq: 7, Kind: KindHTTP, Outcome: &Outcome{Verdict: VerdictFlagged, Reason: ReasonCredentialOutsideHolder},
		HTTP:       &HTTP{Method: "POST", Host: "api.example.com", Path: "/v1/tickets", Status: 201},
		Credential: &Credential{Type: "bearer", Fingerprint: "3f2a9c0d41e7b655", Holder: "tickets-api"}})
	for _, want := range []string{"#7 http", "flagged", "POST api.example.com/v1/tickets 201", "credential=bearer:3f2a9c0d41e7b655 holder=tickets-api", "reason=credential_outside_holder"} {
		if !strings.Contains(h, want) {
			t.Errorf("%q lacks %q", h, want)
		}
	}
	first := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	last := first.Add(1500 * time.Millisecond)
	if a := FormatHuman(&Record{Kind: KindConnect, Count: 19, FirstTime: &first, LastTime: &last}); !strings.Contains(a, "count=19 over=1.5s") {
		t.Errorf("%q lacks the aggregate's count and span", a)
	}
	u := FormatHuman(&Record{Kind: KindTLSUncovered, TLS: &TLS{Library: "go", Uncovered: "Go 1.24 crypto/tls is not probed"}})
	if !strings.Contains(u, `tls=go uncovered="Go 1.24 crypto/tls is not probed"`) {
		t.Errorf("%q", u)
	}
}
