package credential

import "testing"

func TestHoldersCheck(t *testing.T) {
	h := NewHolders([]Holder{
		{Name: "tickets", Fingerprint: "00000000000000aa", Executables: []Executable{{Path: "/opt/mcp/tickets"}}},
		{Name: "billing", Fingerprint: "00000000000000bb", Executables: []Executable{{Path: "/opt/mcp/billing", SHA256: "5ha"}}},
	})
	for _, tc := range []struct {
		fp, exe, sha, holder string
		registered, held     bool
	}{
		{"00000000000000aa", "/opt/mcp/tickets", "", "tickets", true, true},
		{"00000000000000aa", "/usr/bin/curl", "x", "tickets", true, false},
		{"00000000000000bb", "/opt/mcp/billing", "5ha", "billing", true, true},
		{"00000000000000bb", "/opt/mcp/billing", "other", "billing", true, false},
		{"00000000000000bb", "/opt/mcp/billing", "", "billing", true, false}, // hash unknown: not the pinned file
		{"00000000000000cc", "/opt/mcp/tickets", "", "", false, false},
	} {
		holder, registered, held := h.Check(tc.fp, tc.exe, tc.sha)
		if holder != tc.holder || registered != tc.registered || held != tc.held {
			t.Errorf("Check(%s, %s, %q) = %q %v %v, want %q %v %v", tc.fp, tc.exe, tc.sha, holder, registered, held, tc.holder, tc.registered, tc.held)
		}
	}
	var none *Holders
	if _, registered, _ := none.Check("00000000000000aa", "/x", ""); registered {
		t.Error("a nil Holders registers something")
	}
}
