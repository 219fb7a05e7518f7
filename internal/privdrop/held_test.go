package privdrop

import (
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPermitted(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0\n", 0x1ffffffffff, false},
		{"CapPrm:\t0000000000002000\n", 1 << unix.CAP_NET_RAW, false},
		{"CapEff:\t0000000000002000\n", 0, true},
		{"CapPrm:\tzz\n", 0, true},
		{"CapPrm:\t1ffffffffffffffff\n", 0, true}, // more than 64 bits
	} {
		got, err := permitted([]byte(c.in))
		if (err != nil) != c.err || got != c.want {
			t.Errorf("permitted(%q) = %#x, %v; want %#x, error %v", c.in, got, err, c.want, c.err)
		}
	}
}

func FuzzPermitted(f *testing.F) {
	f.Add([]byte("CapPrm:\t000001ffffffffff\n"))
	f.Add([]byte("CapPrm:\n"))
	f.Add([]byte("Name:\tCapPrm:\t1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		permitted(b) // never panics; errors are for the caller
	})
}

// TestHeldGate compares with what this process can see of itself through
// capget, which does not go through /proc.
func TestHeldGate(t *testing.T) {
	var data [2]unix.CapUserData
	if err := unix.Capget(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
		t.Fatal(err)
	}
	prm := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	var want []Cap
	for _, c := range Gate {
		if prm&(1<<uint(c)) != 0 {
			want = append(want, c)
		}
	}
	got, err := HeldGate(os.Getpid())
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("HeldGate(self) = %v, %v; want %v", got, err, want)
	}
	if _, err := HeldGate(-1); err == nil {
		t.Error("HeldGate(-1): no error")
	}
}
