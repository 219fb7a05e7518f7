package enforcer

import (
	"testing"

	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/scope"
)

// Without the hostname programs (a kernel whose verifier refuses them, as
// 5.10 and 6.1 did), the gate still loads and enforces address rules, and
// hostname rules are refused rather than left unenforced.
func TestGateWithoutHostnamePrograms(t *testing.T) {
	f := newFixture(t, Options{NoHostnames: true})
	if f.g.Hostnames() == nil {
		t.Fatal("Hostnames() = nil without the hostname programs")
	}
	if f.g.HostEvents() != nil {
		t.Error("HostEvents() is a ring without the hostname programs")
	}
	if _, err := f.g.HostStats(); err == nil {
		t.Error("HostStats() without the hostname programs: no error")
	}

	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	cg := f.session(t, sessionSpec{slot: 5, rules: []string{"tcp://" + allowed.String()}})
	expect(t, kerneltest.Run(t, cg, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other}), "ok", "EPERM")

	r, err := scope.Parse("api.example.com:443")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.g.WriteNames(5, 1, []scope.Rule{r}); err == nil {
		t.Error("WriteNames of a hostname rule succeeded without the hostname programs")
	}
	if k, err := f.g.objs.HostNames.NextKeyBytes(nil); err != nil || k != nil {
		t.Error("the refused hostname rule left an entry in host_names")
	}
	if err := f.g.HookHostnames(cg); err == nil {
		t.Error("HookHostnames succeeded without the hostname programs")
	}
	// Address rules alone need no hostname programs.
	ar, _ := scope.Parse("tcp://" + allowed.String())
	if err := f.g.WriteNames(5, 1, []scope.Rule{ar}); err != nil {
		t.Errorf("WriteNames of address rules only: %v", err)
	}
	if err := f.g.PurgeLearned(5); err != nil {
		t.Errorf("PurgeLearned: %v", err)
	}
}
