package proccache

import (
	"strings"
	"unicode/utf8"
)

// TruncatedMarker ends the last argument of an argv the kernel cut short.
const TruncatedMarker = "…[truncated]"

// sanitizeArg makes an argument safe to carry in JSON without losing what
// its bytes were: encoding/json would silently turn every invalid byte into
// U+FFFD, so invalid bytes become a visible \xNN escape instead. A literal
// backslash is left alone; the escape is for humans, not for round trips.
func sanitizeArg(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			c := s[i]
			b.WriteString(`\x`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
			i++
			continue
		}
		b.WriteString(s[i : i+n])
		i += n
	}
	return b.String()
}

// sanitizeArgs is args made safe (sanitizeArg), with redact applied (nil:
// none) before a cut-short argv is marked.
func sanitizeArgs(args []string, truncated bool, redact func([]string) []string) []string {
	if len(args) == 0 {
		return nil
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = sanitizeArg(a)
	}
	if redact != nil {
		out = redact(out)
	}
	if truncated {
		out[len(out)-1] += TruncatedMarker
	}
	return out
}
