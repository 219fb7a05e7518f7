package proccache

import (
	"slices"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	s, err := parseStat([]byte("1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 42 1 2 3\n"))
	if err != nil || s.Comm != "systemd" || s.PPID != 0 || s.StartTicks != 42 {
		t.Fatalf("%+v %v", s, err)
	}
	s, err = parseStat([]byte("77 (a) b) (c) R 5 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 99 1 2 3"))
	if err != nil || s.Comm != "a) b) (c" || s.PPID != 5 || s.StartTicks != 99 {
		t.Fatalf("%+v %v", s, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S", "1 (x) S notanint 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 99"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

func TestParseStatusIDs(t *testing.T) {
	uid, gid, err := parseStatusIDs([]byte("Name:\tx\nUid:\t0\t1\t2\t3\nGid:\t4\t5\t6\t7\n"))
	if err != nil || uid != 0 || gid != 4 {
		t.Fatal(uid, gid, err)
	}
	if _, _, err := parseStatusIDs([]byte("Name:\tx\n")); err == nil {
		t.Fatal("accepted")
	}
}

func TestSplitCmdline(t *testing.T) {
	a, tr := splitCmdline([]byte("a\x00bb\x00"), 1024)
	if !slices.Equal(a, []string{"a", "bb"}) || tr {
		t.Fatal(a, tr)
	}
	a, tr = splitCmdline([]byte(strings.Repeat("x", 2000)), 1024)
	if len(a) != 1 || len(a[0]) != 1024 || !tr {
		t.Fatal(len(a), tr)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 42 1 2 3\n"))
	f.Add([]byte("77 (a) b) (c) R 5 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 99 1 2 3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStat(b)
		if err != nil {
			return
		}
		if !strings.Contains(string(b), "("+s.Comm+")") {
			t.Fatalf("comm %q not delimited in %q", s.Comm, b)
		}
	})
}

func FuzzParseStatusIDs(f *testing.F) {
	f.Add([]byte("Uid:\t0\t1\t2\t3\nGid:\t4\t5\t6\t7\n"))
	f.Fuzz(func(t *testing.T, b []byte) { parseStatusIDs(b) })
}
