//go:build linux

package tlsprobe

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"strings"
)

// Stacks the probes cannot read, as Uncovered names them.
const (
	StackGo     = "go"
	StackGnuTLS = "gnutls"
	StackNSS    = "nss"
	StackWolf   = "wolfssl"
	StackMbed   = "mbedtls"
)

// foreignLibs are TLS libraries other than OpenSSL's, by the start of
// their soname.
var foreignLibs = map[string]string{
	"libgnutls.": StackGnuTLS, "libnss3.": StackNSS, "libssl3.": StackNSS, "libwolfssl.": StackWolf, "libmbedtls.": StackMbed,
}

// Uncovered says whether the executable at path speaks TLS through a
// stack the probes do not read, which (stack) and why (reason); "" when
// it does not, or uses OpenSSL, or cannot be told. It reads the file
// only: Go's function names are in its pclntab even when the binary is
// stripped (-s -w).
func Uncovered(path string) (stack, reason string) {
	f, err := elf.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	if bi, err := buildinfo.ReadFile(path); err == nil {
		if s := f.Section(".gopclntab"); s != nil {
			if data, err := s.Data(); err == nil && bytes.Contains(data, []byte("crypto/tls.(*Conn).Write")) {
				return StackGo, "Go " + strings.TrimPrefix(bi.GoVersion, "go") + " crypto/tls is not probed"
			}
		}
		return "", ""
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return "", ""
	}
	for _, lib := range libs {
		for prefix, stack := range foreignLibs {
			if strings.HasPrefix(lib, prefix) {
				return stack, lib + " is not probed"
			}
		}
	}
	return "", ""
}
