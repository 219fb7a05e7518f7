package procfs

import (
	"strings"
	"testing"
)

func TestParseProcCgroup(t *testing.T) {
	p, err := ParseProcCgroup("9:name=systemd:/\n4:memory:/x\n0::/system.slice/a.service\n")
	if err != nil || p != "/system.slice/a.service" {
		t.Fatalf("%q %v", p, err)
	}
	if _, err := ParseProcCgroup("4:memory:/x\n"); err == nil {
		t.Fatal("want error without 0:: line")
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add("0::/system.slice/a.service\n")
	f.Add("12:pids:/\n0::/\n")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseProcCgroup(s)
		if err == nil && !strings.Contains(s, "0::"+p) {
			t.Fatalf("%q not from %q", p, s)
		}
	})
}
