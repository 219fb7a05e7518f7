package credential

// Holders are credentials registered by fingerprint with the executables
// that may send them (an MCP server holding an API key): a request that
// carries one from any other executable goes around its holder.
type Holders struct {
	byFingerprint map[string]Holder
}

// Holder is one registered credential.
type Holder struct {
	Name        string
	Fingerprint string
	Executables []Executable
}

// Executable is a file by path and, when SHA256 is set, by content.
type Executable struct {
	Path   string
	SHA256 string
}

// NewHolders indexes hs by fingerprint. Configuration validation has
// refused duplicates and malformed fingerprints.
func NewHolders(hs []Holder) *Holders {
	h := &Holders{byFingerprint: make(map[string]Holder, len(hs))}
	for _, r := range hs {
		h.byFingerprint[r.Fingerprint] = r
	}
	return h
}

// Check says who holds the credential with fingerprint fp, and whether
// the executable exe (with content hash sha256, "" when unknown) is one of
// its holder's. An unregistered credential has no holder. A holder's
// executable pinned by hash is not matched by a process whose hash is
// unknown: the check fails closed.
func (h *Holders) Check(fp, exe, sha256 string) (holder string, registered, held bool) {
	if h == nil {
		return "", false, false
	}
	r, ok := h.byFingerprint[fp]
	if !ok {
		return "", false, false
	}
	for _, e := range r.Executables {
		if e.Path == exe && (e.SHA256 == "" || e.SHA256 == sha256) {
			return r.Name, true, true
		}
	}
	return r.Name, true, false
}
