package audit

import "slices"

// Filter decides which records a sink receives. The zero Filter passes
// everything.
type Filter struct {
	kinds    []string
	verdicts []string
}

// NewFilter compiles a validated FilterConfig; nil passes everything.
func NewFilter(fc *FilterConfig) Filter {
	if fc == nil {
		return Filter{}
	}
	f := Filter{kinds: slices.Clone(fc.Kinds), verdicts: slices.Clone(fc.Verdicts)}
	if fc.DenialsOnly {
		f.verdicts = []string{VerdictDenied, VerdictWouldDeny}
	}
	return f
}

// Match reports whether r passes. Gap records always pass because a sink
// that silently lost records is worse than one that gets an extra line.
func (f Filter) Match(r *Record) bool {
	if r.Kind == KindGap {
		return true
	}
	kindListed := slices.Contains(f.kinds, r.Kind)
	if len(f.kinds) > 0 && !kindListed {
		return false
	}
	if len(f.verdicts) == 0 {
		return true
	}
	if r.Outcome == nil {
		return kindListed
	}
	return slices.Contains(f.verdicts, r.Outcome.Verdict)
}
