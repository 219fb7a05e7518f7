package httpwire

import (
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const akid = "AKIAIOSFODNN7EXAMPLE"

// credCases are requests with the credential each must yield and the
// secrets that must not appear in the calls.
var credCases = []struct {
	name    string
	headers []string // name, value
	query   string
	want    Credential
	secrets []string
}{
	{"bearer", []string{"Authorization", "Bearer tok-bearer-1"}, "",
		Credential{CredentialBearer, "authorization", testFingerprint("tok-bearer-1"), ""}, []string{"tok-bearer-1"}},
	{"basic", []string{"Proxy-Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("user:pass-basic"))}, "",
		Credential{CredentialBasic, "proxy-authorization", testFingerprint("user:pass-basic"), ""},
		[]string{"pass-basic", base64.StdEncoding.EncodeToString([]byte("user:pass-basic"))}},
	{"basic undecodable", []string{"Authorization", "basic !!not-b64!!"}, "",
		Credential{CredentialBasic, "authorization", testFingerprint("!!not-b64!!"), ""}, []string{"!!not-b64!!"}},
	{"x-api-key", []string{"X-Api-Key", "key-api-1"}, "",
		Credential{CredentialAPIKey, "x-api-key", testFingerprint("key-api-1"), ""}, []string{"key-api-1"}},
	{"api-key", []string{"api-key", "key-api-2"}, "",
		Credential{CredentialAPIKey, "api-key", testFingerprint("key-api-2"), ""}, []string{"key-api-2"}},
	{"configured", []string{"X-Custom-Key", "key-custom"}, "",
		Credential{CredentialAPIKey, "x-custom-key", testFingerprint("key-custom"), ""}, []string{"key-custom"}},
	{"sigv4", []string{"Authorization", "AWS4-HMAC-SHA256 Credential=" + akid + "/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=sig0123secret"}, "",
		Credential{CredentialAWSSigV4, "authorization", testFingerprint(akid), akid}, []string{"sig0123secret"}},
	{"other", []string{"Authorization", "Token other-secret-1"}, "",
		Credential{CredentialOther, "authorization", testFingerprint("Token other-secret-1"), ""}, []string{"other-secret-1"}},
	{"presigned", nil, "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + akid + "%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=presign-secret",
		Credential{CredentialAWSSigV4, sigV4QueryHeader, testFingerprint(akid), akid}, []string{"presign-secret"}},
}

var credOpts = &Options{Fingerprint: testFingerprint, CredentialHeaders: []string{"X-CUSTOM-KEY"}}

func TestCredentialsH1(t *testing.T) {
	for _, tc := range credCases {
		t.Run(tc.name, func(t *testing.T) {
			req := "GET /c"
			if tc.query != "" {
				req += "?" + tc.query
			}
			req += " HTTP/1.1\r\nHost: h\r\n"
			for i := 0; i < len(tc.headers); i += 2 {
				req += tc.headers[i] + ": " + tc.headers[i+1] + "\r\n"
			}
			calls := feedAll(NewConn(credOpts, false), req+"\r\n", "HTTP/1.1 204 No Content\r\n\r\n")
			checkCredential(t, calls, tc.want, tc.secrets)
		})
	}
}

func TestCredentialsH2(t *testing.T) {
	for _, tc := range credCases {
		t.Run(tc.name, func(t *testing.T) {
			path := "/c"
			if tc.query != "" {
				path += "?" + tc.query
			}
			fields := []string{":method", "GET", ":scheme", "https", ":authority", "h", ":path", path}
			for i := 0; i < len(tc.headers); i += 2 {
				fields = append(fields, strings.ToLower(tc.headers[i]), tc.headers[i+1])
			}
			b := newH2Build(true)
			b.headers(1, true, fields...)
			r := newH2Build(false)
			r.headers(1, true, ":status", "204")
			calls := feedAll(NewConn(credOpts, false), b.String(), r.String())
			checkCredential(t, calls, tc.want, tc.secrets)
		})
	}
}

func checkCredential(t *testing.T, calls []Call, want Credential, secrets []string) {
	t.Helper()
	if len(calls) != 1 || calls[0].Host != "h" || calls[0].Path != "/c" || calls[0].Status != 204 {
		t.Fatalf("calls %+v", calls)
	}
	if got := calls[0].Credentials; !reflect.DeepEqual(got, []Credential{want}) {
		t.Errorf("credentials %+v, want %+v", got, want)
	}
	dump := fmt.Sprintf("%+v %#v", calls, calls)
	for _, s := range secrets {
		if strings.Contains(dump, s) {
			t.Errorf("secret %q in %s", s, dump)
		}
	}
}

func TestCredentialsWithoutFingerprint(t *testing.T) {
	calls := feedAll(NewConn(nil, false), "GET / HTTP/1.1\r\nAuthorization: Bearer nofp-secret\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n")
	want := []Credential{{Type: CredentialBearer, Header: "authorization"}}
	if len(calls) != 1 || !reflect.DeepEqual(calls[0].Credentials, want) {
		t.Fatalf("calls %+v", calls)
	}
}

func TestCredentialsBounded(t *testing.T) {
	req := "GET / HTTP/1.1\r\n"
	for i := range 100 {
		req += fmt.Sprintf("x-api-key: k%d\r\nx-api-key: k0\r\n", i)
	}
	calls := feedAll(NewConn(credOpts, false), req+"\r\n", "HTTP/1.1 204 No Content\r\n\r\n")
	if len(calls) != 1 || len(calls[0].Credentials) != maxCredentialsPerCall {
		t.Fatalf("calls %+v", calls)
	}
}
