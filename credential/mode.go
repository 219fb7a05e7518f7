package credential

import "fmt"

// Mode is what credentials a session's members may send (issue 16 item
// 4): any, or only those a registered holder owns.
type Mode string

const (
	// ModeAny: every credential; a registered one is still flagged when
	// it comes from outside its holder.
	ModeAny Mode = "any"
	// ModeRegisteredOnly: besides, a credential no holder owns is
	// flagged (credential_unregistered).
	ModeRegisteredOnly Mode = "registered-only"
)

// ParseMode reads a session's credentials mode; "" is ModeAny.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return ModeAny, nil
	case ModeAny, ModeRegisteredOnly:
		return m, nil
	}
	return "", fmt.Errorf("unknown credentials mode %q (want any or registered-only)", s)
}

// Within reports whether m is at least as strict as parent.
func (m Mode) Within(parent Mode) bool {
	return parent != ModeRegisteredOnly || m == ModeRegisteredOnly
}
