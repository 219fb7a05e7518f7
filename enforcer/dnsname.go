package enforcer

import (
	"fmt"
	"strings"
)

// MaxQueryName is the most bytes of a refused query's name a record
// carries: enough to see what was asked, not enough for a member to ship
// much through the audit trail itself.
const MaxQueryName = 64

// SanitizeQueryName turns the wire form of a DNS question name (length
// prefixed labels, as the kernel copies them from a refused query, any byte
// values) into printable ASCII for a record: labels joined by dots, and
// every byte outside '!'..'~', and '.' or '\' inside a label, written as
// \DDD (RFC 1035 presentation form). The result is at most MaxQueryName
// bytes, cut between characters, never inside an escape; truncated says
// something was left out (by the cut, or because raw ends before the name
// does). A label length the wire format does not allow (a compression
// pointer, a reserved type) is written escaped and ends the name.
func SanitizeQueryName(raw []byte) (name string, truncated bool) {
	var b strings.Builder
	put := func(s string) bool {
		if b.Len()+len(s) > MaxQueryName {
			truncated = true
			return false
		}
		b.WriteString(s)
		return true
	}
	pos := 0
	for labels := 0; ; labels++ {
		if pos >= len(raw) {
			truncated = true
			break
		}
		n := int(raw[pos])
		if n == 0 {
			if labels == 0 {
				put(".")
			}
			break
		}
		if labels > 0 && !put(".") {
			break
		}
		if n&0xC0 != 0 {
			put(escapeByte(raw[pos]))
			break
		}
		pos++
		stop := false
		for i := 0; i < n && !stop; i++ {
			if pos >= len(raw) {
				truncated = true
				stop = true
				break
			}
			stop = !put(escapeByte(raw[pos]))
			pos++
		}
		if stop {
			break
		}
	}
	return b.String(), truncated
}

func escapeByte(c byte) string {
	if c > ' ' && c <= '~' && c != '.' && c != '\\' {
		return string(rune(c))
	}
	return fmt.Sprintf("\\%03d", c)
}
