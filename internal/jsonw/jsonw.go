// Package jsonw appends JSON the way encoding/json writes it with HTML
// escaping off, for the hand-written encoders of audit records (the native
// canonical form, audit.AppendCanonical, and OCSF): they must match
// encoding/json byte for byte (their tests compare them), at a fraction
// of its cost (docs/benchmarks.md, issue 17).
package jsonw

import (
	"strconv"
	"unicode/utf8"
)

// Key appends key, a member name written with a leading comma,
// dropping the comma when the member is the first of its object. Only
// objects whose members are all optional need it: a member value always
// ends in '"', '}', ']' or a digit, never in '{'.
func Key(dst []byte, key string) []byte {
	if dst[len(dst)-1] == '{' {
		key = key[1:]
	}
	return append(dst, key...)
}

// OptString appends key and s unless s is empty (omitempty).
func OptString(dst []byte, key, s string) []byte {
	if s == "" {
		return dst
	}
	dst = Key(dst, key)
	return String(dst, s)
}

// OptInt appends key and v unless v is 0 (omitempty).
func OptInt(dst []byte, key string, v int64) []byte {
	if v == 0 {
		return dst
	}
	dst = Key(dst, key)
	return strconv.AppendInt(dst, v, 10)
}

// OptUint appends key and v unless v is 0 (omitempty).
func OptUint(dst []byte, key string, v uint64) []byte {
	if v == 0 {
		return dst
	}
	dst = Key(dst, key)
	return strconv.AppendUint(dst, v, 10)
}

// Strings appends ss as an array of strings (a nil ss too: callers
// check omitempty and null themselves).
func Strings(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = String(dst, s)
	}
	return append(dst, ']')
}

const (
	hexDigits = "0123456789abcdef"
	lsb       = 0x0101010101010101 // one in the low bit of every byte
)

// jsonSafe reports the ASCII bytes encoding/json writes unescaped when
// HTML escaping is off: everything from space to DEL except '"' and '\\'.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := ' '; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// String appends s as a JSON string the way encoding/json does with
// HTML escaping off: '"' and '\\' backslash-escaped, \b \f \n \r \t short
// escapes, other control bytes as \u00XX (lower-case hex), each byte of
// invalid UTF-8 as \ufffd, and U+2028 / U+2029 as \u2028 / \u2029.
func String(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight plain bytes at a time: printable ASCII other than
		// '"' and '\\'. A non-zero mask may be a false positive only
		// above a byte that really needs work, which the loop below then
		// handles one byte at a time.
		for i+8 <= len(s) {
			w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
				uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
			q, bs := w^(lsb*'"'), w^(lsb*'\\')
			if (w|(w-lsb*' ')|(q-lsb)&^q|(bs-lsb)&^bs)&(lsb*0x80) != 0 {
				break
			}
			i += 8
		}
		if i >= len(s) {
			break
		}
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
