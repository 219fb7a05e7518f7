//go:build linux

package tlsprobe

import (
	"debug/buildinfo"
	"errors"
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
// it does not, or uses a stack they read (OpenSSL, a Go crypto/tls that
// Attach takes), or cannot be told. It reads the file only: Go's function
// names are in its pclntab even when the binary is stripped (-s -w).
func Uncovered(path string) (stack, reason string) {
	f, err := openELF(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	if _, err := buildinfo.ReadFile(path); err == nil {
		switch _, err := inspectGo(path); {
		case err == nil, errors.Is(err, errNotGoTLS):
			return "", ""
		default:
			var gerr *GoError
			if errors.As(err, &gerr) {
				return StackGo, gerr.Error()
			}
			return StackGo, "Go crypto/tls: " + err.Error()
		}
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
