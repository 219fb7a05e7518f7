package sockdiag

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseReply feeds Parse arbitrary datagrams: it must not panic, must
// fail only with ErrMalformed, and what it decodes must encode back to a
// datagram that decodes the same.
func FuzzParseReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseAll(b)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("Parse error %v does not wrap ErrMalformed", err)
		}
		var again []byte
		for i := range got {
			again = appendMessage(again, &got[i])
		}
		got2, err := parseAll(again)
		if err != nil {
			t.Fatalf("Parse of the re-encoded messages: %v", err)
		}
		if len(got) != len(got2) || (len(got) > 0 && !reflect.DeepEqual(got, got2)) {
			t.Fatalf("re-encoded messages decode as %+v, want %+v", got2, got)
		}
	})
}

var writeSeeds = flag.Bool("write-seeds", false, "rewrite the seed corpus of FuzzParseReply in testdata")

// seedReplies are the committed seeds of FuzzParseReply: replies as the
// kernel sends them to Conn, and a few it must refuse.
func seedReplies() map[string][]byte {
	dump := appendMessage(nil, &Message{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: unix.NLM_F_MULTI, Seq: 2, Diag: sampleTCP4})
	dump = appendMessage(dump, &Message{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: unix.NLM_F_MULTI, Seq: 2, Diag: sampleTCP6})
	done := appendMessage(nil, &Message{Type: unix.NLMSG_DONE, Flags: unix.NLM_F_MULTI, Seq: 2})
	var destroys []byte
	for i, e := range []unix.Errno{unix.ENOENT, unix.EOPNOTSUPP, unix.EPERM} {
		destroys = appendMessage(destroys, &Message{Type: unix.NLMSG_ERROR, Seq: uint32(10 + i), Errno: e})
	}
	return map[string][]byte{
		"dump":             append(append([]byte(nil), dump...), done...),
		"dump-interrupted": appendMessage(dump, &Message{Type: unix.NLMSG_DONE, Flags: unix.NLM_F_MULTI | unix.NLM_F_DUMP_INTR, Seq: 2}),
		"dump-failed":      appendMessage(nil, &Message{Type: unix.NLMSG_DONE, Flags: unix.NLM_F_MULTI, Seq: 5, Errno: unix.EINVAL}),
		"destroy-failures": destroys,
		"ack":              appendMessage(nil, &Message{Type: unix.NLMSG_ERROR, Seq: 1}),
		"truncated":        dump[:len(dump)-30],
		"bad-length":       append(append([]byte(nil), done[:4]...), []byte{0xff, 0xff, 0, 0, 0, 0}...),
	}
}

// TestSeedCorpus checks that the committed seeds are the ones
// seedReplies makes (-write-seeds writes them).
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseReply")
	for name, b := range seedReplies() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if *writeSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s is stale: go test -run TestSeedCorpus -write-seeds", path)
		}
	}
}
