package httpwire

import (
	"encoding/base64"
	"strings"
)

// CredentialType says what kind of credential a request carried.
type CredentialType string

const (
	CredentialBearer   CredentialType = "bearer"    // Authorization: Bearer <token>
	CredentialBasic    CredentialType = "basic"     // Authorization: Basic <base64 user:pass>
	CredentialAPIKey   CredentialType = "api_key"   // x-api-key, api-key, Options.CredentialHeaders
	CredentialAWSSigV4 CredentialType = "aws_sigv4" // AWS Signature Version 4, header or presigned query
	CredentialOther    CredentialType = "other"     // Authorization with another scheme
)

// Credential is a credential a request carried, named but not kept.
type Credential struct {
	Type CredentialType
	// Header is the lower-case name of the header it came in, or for a
	// presigned URL "?" and the query parameter, "?x-amz-credential".
	Header string
	// Fingerprint is Options.Fingerprint of the secret: the bearer token,
	// the decoded "user:pass" of basic (the raw base64 if it does not
	// decode), the API key, the whole value of another scheme, or for
	// SigV4 the access key id (the signature is never used).
	Fingerprint string
	// KeyID is the SigV4 access key id, which is not a secret; empty for
	// other types.
	KeyID string
}

const sigV4QueryHeader = "?x-amz-credential"

// text is the header representation of either parser: HTTP/1.1 works on
// the captured bytes, HPACK hands out strings.
type text interface{ ~string | ~[]byte }

func foldEq[T text](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(s) {
		if toLower(b[i]) != toLower(s[i]) {
			return false
		}
	}
	return true
}

// headerCredential appends the credential header name: value carries, if
// any. The value is reduced to its fingerprint here and not retained.
func headerCredential[T text](o *options, list []Credential, name, value T) []Credential {
	var header string
	switch {
	case foldEq(name, "authorization"):
		header = "authorization"
	case foldEq(name, "proxy-authorization"):
		header = "proxy-authorization"
	case foldEq(name, "x-api-key"):
		header = "x-api-key"
	case foldEq(name, "api-key"):
		header = "api-key"
	default:
		for _, h := range o.credentialHeaders {
			if foldEq(name, h) {
				header = h
				break
			}
		}
		if header == "" {
			return list
		}
	}
	if len(value) == 0 {
		return list
	}
	if header != "authorization" && header != "proxy-authorization" {
		return addCredential(list, Credential{Type: CredentialAPIKey, Header: header, Fingerprint: o.fp(string(value))})
	}
	return addCredential(list, authorization(o, header, value))
}

func authorization[T text](o *options, header string, value T) Credential {
	scheme, rest := value, value[len(value):]
	for i := range len(value) {
		if value[i] == ' ' {
			scheme, rest = value[:i], value[i+1:]
			break
		}
	}
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	switch {
	case foldEq(scheme, "bearer") && len(rest) > 0:
		return Credential{Type: CredentialBearer, Header: header, Fingerprint: o.fp(string(rest))}
	case foldEq(scheme, "basic") && len(rest) > 0:
		raw := []byte(string(rest))
		decoded := make([]byte, base64.StdEncoding.DecodedLen(len(raw)))
		n, err := base64.StdEncoding.Decode(decoded, raw)
		fp := o.fp(string(raw))
		if err == nil {
			fp = o.fp(string(decoded[:n]))
		}
		clear(raw)
		clear(decoded)
		return Credential{Type: CredentialBasic, Header: header, Fingerprint: fp}
	case foldEq(scheme, "aws4-hmac-sha256"):
		if id := sigV4KeyID(string(rest)); id != "" {
			return Credential{Type: CredentialAWSSigV4, Header: header, Fingerprint: o.fp(id), KeyID: id}
		}
	}
	return Credential{Type: CredentialOther, Header: header, Fingerprint: o.fp(string(value))}
}

// sigV4KeyID finds the access key id in "Credential=AKID/date/region/...".
func sigV4KeyID(params string) string {
	_, after, ok := strings.Cut(params, "Credential=")
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(after, "/")
	if !ok || !isKeyID(id) {
		return ""
	}
	return id
}

// isKeyID accepts what AWS access key ids are made of, so that a malformed
// header cannot put arbitrary text (perhaps a secret) into KeyID.
func isKeyID(id string) bool {
	if len(id) < 16 || len(id) > 128 {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// queryCredentials finds the access key id of a SigV4 presigned URL,
// X-Amz-Credential=AKID%2Fdate%2F...
func queryCredentials[T text](o *options, list []Credential, query T) []Credential {
	q := string(query)
	for q != "" {
		var param string
		param, q, _ = strings.Cut(q, "&")
		name, value, _ := strings.Cut(param, "=")
		if !foldEq(name, "x-amz-credential") {
			continue
		}
		end := strings.IndexAny(value, "%/")
		if end < 0 {
			continue
		}
		if id := value[:end]; isKeyID(id) {
			list = addCredential(list, Credential{Type: CredentialAWSSigV4, Header: sigV4QueryHeader, Fingerprint: o.fp(id), KeyID: id})
		}
	}
	return list
}

func (o *options) fp(secret string) string {
	if o.fingerprint == nil {
		return ""
	}
	return o.fingerprint(secret)
}

// addCredential appends c unless the call has it already or has too many.
func addCredential(list []Credential, c Credential) []Credential {
	if len(list) >= maxCredentialsPerCall {
		return list
	}
	for _, have := range list {
		if have == c {
			return list
		}
	}
	return append(list, c)
}
