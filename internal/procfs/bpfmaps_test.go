package procfs

import (
	"os"
	"testing"
)

func TestParseBPFMapInfo(t *testing.T) {
	for _, c := range []struct {
		in   string
		want BPFMap
		ok   bool
	}{
		{"pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nmap_type:\t27\nkey_size:\t0\nvalue_size:\t0\nmax_entries:\t8388608\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t8400896\nmap_id:\t95\nfrozen:\t0\n",
			BPFMap{Type: 27, MaxEntries: 8388608}, true},
		{"pos:\t0\nflags:\t0100000\nmnt_id:\t23\nino:\t3\n", BPFMap{}, false}, // not a map
		{"map_type:\tx\nmax_entries:\t4\n", BPFMap{MaxEntries: 4}, false},
		{"", BPFMap{}, false},
	} {
		got, ok := ParseBPFMapInfo(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseBPFMapInfo(%q) = %+v, %v; want %+v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestBPFMapsOfAProcessWithoutMaps(t *testing.T) {
	maps, err := BPFMaps(os.Getpid())
	if err != nil || len(maps) != 0 {
		t.Fatalf("BPFMaps(self) = %v, %v; the test holds no map", maps, err)
	}
	if _, err := BPFMaps(-1); err == nil {
		t.Error("BPFMaps(-1) succeeded")
	}
}
