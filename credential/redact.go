package credential

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Redaction of credentials in a command line. `curl -H "Authorization:
// Bearer sk-..."` puts the key in the process's argv, and every record of
// that process (and of its children, in their ancestry) would repeat it. A
// Redactor replaces each credential-shaped value with
// "redacted:FINGERPRINT" before argv is kept anywhere:
//
//   - a header-like argument "Name: value" for a credential header
//     (Authorization and Proxy-Authorization keep their scheme: "Bearer
//     redacted:..."), as curl -H and wget --header take them;
//   - "name=value" for a credential name, with or without leading dashes
//     (--api-key=..., OPENAI_API_KEY=... before a command, token=... in a
//     query string), and a credential flag's value in the next argument
//     (--password VALUE);
//   - the password of a URL's user info (https://user:PASSWORD@host) and
//     of curl's --user/-u user:PASSWORD;
//   - tokens of well-known formats anywhere in an argument (OpenAI and
//     Anthropic sk-, GitHub ghp_ and github_pat_, Slack xox*-, GitLab
//     glpat-, Google AIza, Stripe sk_live_, npm_, hf_, JSON web tokens);
//   - the names and patterns the operator configures.
//
// What is not credential-shaped stays as it was: a redactor that missed a
// shape leaks that shape, so the lists are kept broad and tested with one
// sample each.

const placeholderPrefix = "redacted:"

// Placeholder is what a redacted value becomes.
func Placeholder(fingerprint string) string { return placeholderPrefix + fingerprint }

// Redactor finds and replaces credentials in argv.
type Redactor struct {
	key   *Key
	names map[string]bool // normalised credential names (normName)
	// patterns are the configured patterns in one alternation (nil:
	// none): one scan of an argument, not one per pattern.
	patterns *regexp.Regexp
}

// credentialNames are the names whose value is a credential, as headers,
// parameters, flags and environment-style assignments, normalised.
var credentialNames = []string{
	"authorization", "proxy_authorization", "x_api_key", "api_key", "apikey", "x_auth_token",
	"x_access_token", "auth_token", "access_token", "refresh_token", "id_token", "session_token",
	"token", "secret", "client_secret", "password", "passwd", "pass", "private_key", "secret_key",
	"access_key", "cookie", "bearer", "credential", "credentials", "x_goog_api_key", "ocp_apim_subscription_key",
}

// credentialSuffixes make any name ending in them a credential name:
// OPENAI_API_KEY, GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD.
var credentialSuffixes = []string{
	"_token", "_secret", "_password", "_passwd", "_api_key", "_apikey", "_access_key", "_secret_key",
	"_private_key", "_auth",
}

// authSchemes are the names whose value is "Scheme credentials", and
// authSchemeNames the schemes kept in the clear; a value that starts with
// anything else is redacted whole.
var (
	authSchemes     = map[string]bool{"authorization": true, "proxy_authorization": true}
	authSchemeNames = map[string]bool{"bearer": true, "basic": true, "digest": true, "token": true, "negotiate": true,
		"ntlm": true, "aws4-hmac-sha256": true, "hoba": true, "mutual": true, "oauth": true, "apikey": true, "key": true,
		"scram-sha-1": true, "scram-sha-256": true, "vapid": true, "dpop": true, "gnap": true}
)

// wellKnown are token formats recognised wherever they appear, each with a
// literal every match contains, so that an argument is scanned only for
// the formats it could hold.
var wellKnown = []struct{ hint, pattern string }{
	{"sk-", `sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}`},
	{"gh", `gh[pousr]_[A-Za-z0-9]{30,}`},
	{"github_pat_", `github_pat_[A-Za-z0-9_]{22,}`},
	{"xox", `xox[abprs]-[A-Za-z0-9-]{10,}`},
	{"glpat-", `glpat-[A-Za-z0-9_-]{20,}`},
	{"AIza", `AIza[0-9A-Za-z_-]{35}`},
	{"k_", `[sr]k_(?:live|test)_[0-9A-Za-z]{16,}`},
	{"npm_", `npm_[A-Za-z0-9]{36}`},
	{"hf_", `hf_[A-Za-z0-9]{30,}`},
	{"eyJ", `eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}`},
}

// wellKnownRe are wellKnown's patterns, compiled.
var wellKnownRe = func() []*regexp.Regexp {
	out := make([]*regexp.Regexp, len(wellKnown))
	for i, w := range wellKnown {
		out[i] = regexp.MustCompile(w.pattern)
	}
	return out
}()

var (
	headerRe = regexp.MustCompile(`^\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(\S.*)$`)
	assignRe = regexp.MustCompile(`^(-{0,2})([A-Za-z_][A-Za-z0-9_.-]*)=(.+)$`)
	// userinfo is scheme://user:password@ in a URL.
	userinfoRe = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)([^/\s@]+)@`)
	// queryRe is name=value in a URL's query string.
	queryRe = regexp.MustCompile(`([?&;])([A-Za-z_][A-Za-z0-9_.-]*)=([^&#\s]+)`)
	// quotedRe is a quoted value given to a name inside a script or a
	// document: "name": "value" (JSON, a Python or JavaScript object) or
	// name = "value" (an assignment), the name quoted or not.
	quotedRe = regexp.MustCompile(`["']?([A-Za-z_][A-Za-z0-9_.-]*)["']?\s*[:=]\s*["']([^"'\n]+)["']`)
)

// NewRedactor is a redactor with the built-in lists and the operator's
// extra names (headers, parameters, variables: compared without case, with
// '-' and '.' as '_') and patterns (Go regular expressions; each match is
// redacted).
func NewRedactor(k *Key, names, patterns []string) (*Redactor, error) {
	r := &Redactor{key: k, names: map[string]bool{}}
	for _, n := range append(credentialNames, names...) {
		if n = normName(n); n == "" {
			return nil, fmt.Errorf("credential: empty credential name")
		}
		r.names[n] = true
	}
	var alt []string
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("credential: pattern %q: %w", p, err)
		}
		if re.MatchString("") {
			return nil, fmt.Errorf("credential: pattern %q matches the empty string", p)
		}
		alt = append(alt, "(?:"+p+")")
	}
	if len(alt) > 0 {
		r.patterns = regexp.MustCompile(strings.Join(alt, "|"))
	}
	return r, nil
}

var nameSeparators = strings.NewReplacer("-", "_", ".", "_")

func normName(n string) string {
	return nameSeparators.Replace(strings.ToLower(strings.TrimSpace(n)))
}

// isName reports whether name (as written) names a credential.
func (r *Redactor) isName(name string) bool {
	n := normName(name)
	if r.names[n] {
		return true
	}
	for _, s := range credentialSuffixes {
		if strings.HasSuffix(n, s) {
			return true
		}
	}
	return false
}

// hide is the placeholder of secret; a placeholder stays as it is, so
// that redacting twice changes nothing.
func (r *Redactor) hide(secret string) string {
	if strings.HasPrefix(secret, placeholderPrefix) {
		return secret
	}
	return Placeholder(r.key.Fingerprint(secret))
}

// Argv returns args with every credential replaced. It returns args itself
// when there is none, so the common case copies nothing.
func (r *Redactor) Argv(args []string) []string {
	var out []string
	valueNext := false // the previous argument was a credential flag
	userNext := false  // the previous argument was curl's -u/--user
	for i, a := range args {
		red := a
		switch {
		case valueNext:
			red = r.hide(a)
		case userNext && strings.Contains(a, ":"):
			user, pass, _ := strings.Cut(a, ":")
			red = user + ":" + r.hide(pass)
		default:
			red = r.arg(a)
		}
		flag := strings.HasPrefix(a, "-") && !strings.Contains(a, "=")
		valueNext = flag && len(strings.TrimLeft(a, "-")) > 1 && r.isName(strings.TrimLeft(a, "-"))
		userNext = a == "-u" || a == "--user" || a == "--proxy-user"
		if red != a && out == nil {
			out = append(make([]string, 0, len(args)), args[:i]...)
		}
		if out != nil {
			out = append(out, red)
		}
	}
	if out == nil {
		return args
	}
	return out
}

// arg redacts the credentials within one argument.
func (r *Redactor) arg(a string) string {
	// Each regular expression runs only on arguments holding the
	// character it needs: most arguments hold none.
	if m := matchIf(a, ":", headerRe); m != nil && r.isName(m[1]) {
		value := m[2]
		if authSchemes[normName(m[1])] {
			if scheme, cred, ok := strings.Cut(value, " "); ok && authSchemeNames[strings.ToLower(scheme)] && strings.TrimSpace(cred) != "" {
				return a[:len(a)-len(value)] + scheme + " " + r.hide(strings.TrimSpace(cred))
			}
		}
		return a[:len(a)-len(value)] + r.hide(value)
	}
	if m := matchIf(a, "=", assignRe); m != nil {
		if r.isName(m[2]) {
			return m[1] + m[2] + "=" + r.hide(m[3])
		}
		// --header=Authorization: ..., --url=https://user:pass@...
		return m[1] + m[2] + "=" + r.arg(m[3])
	}
	// The rest may be anywhere in the argument: find every span on the
	// original text, then replace the merged spans, each by the
	// fingerprint of what it covered.
	var spans [][2]int
	if strings.Contains(a, "://") {
		for _, m := range userinfoRe.FindAllStringSubmatchIndex(a, -1) {
			spans = append(spans, [2]int{m[4], m[5]})
		}
	}
	if strings.Contains(a, "=") {
		for _, m := range queryRe.FindAllStringSubmatchIndex(a, -1) {
			if r.isName(a[m[4]:m[5]]) {
				spans = append(spans, [2]int{m[6], m[7]})
			}
		}
	}
	if strings.ContainsAny(a, `"'`) {
		for _, m := range quotedRe.FindAllStringSubmatchIndex(a, -1) {
			if r.isName(a[m[2]:m[3]]) {
				spans = append(spans, [2]int{m[4], m[5]})
			}
		}
	}
	for i, w := range wellKnown {
		if strings.Contains(a, w.hint) {
			for _, m := range wellKnownRe[i].FindAllStringIndex(a, -1) {
				spans = append(spans, [2]int{m[0], m[1]})
			}
		}
	}
	if r.patterns != nil {
		for _, m := range r.patterns.FindAllStringIndex(a, -1) {
			spans = append(spans, [2]int{m[0], m[1]})
		}
	}
	if len(spans) == 0 {
		return a
	}
	slices.SortFunc(spans, func(x, y [2]int) int { return x[0] - y[0] })
	var b strings.Builder
	at := 0
	for k := 0; k < len(spans); {
		start, end := spans[k][0], spans[k][1]
		for k++; k < len(spans) && spans[k][0] < end; k++ {
			end = max(end, spans[k][1])
		}
		b.WriteString(a[at:start])
		b.WriteString(r.hide(a[start:end]))
		at = end
	}
	b.WriteString(a[at:])
	return b.String()
}

// matchIf is re's submatches in a, when a contains need.
func matchIf(a, need string, re *regexp.Regexp) []string {
	if !strings.Contains(a, need) {
		return nil
	}
	return re.FindStringSubmatch(a)
}
