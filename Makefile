# agentfence — eBPF egress gate and kernel-attributed audit for AI agents.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.DEFAULT_GOAL := help

.PHONY: help
help: ## show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build agentfenced, agentfence and the demo programs into bin/
	$(GO) build -trimpath -o $(BIN)/ ./cmd/agentfenced ./cmd/agentfence
	$(GO) build -trimpath -o $(BIN)/standin ./demo/standin
	$(GO) build -trimpath -o $(BIN)/demo-agent ./demo/agent
	$(GO) build -trimpath -o $(BIN)/demo-mcpagent ./demo/mcpagent
	$(GO) build -trimpath -o $(BIN)/mcpserver ./demo/mcpserver

.PHONY: generate
generate: ## regenerate the BPF objects and their Go bindings (clang, llvm-strip, libbpf-dev), the Kubernetes deep copies and CRDs
	$(GO) generate ./enforcer/... ./sensor/...
	$(GO) -C tools/controller-gen build -o $(abspath $(BIN))/controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen
	$(BIN)/controller-gen object paths=./kube/v1alpha1/... crd:crdVersions=v1 output:crd:dir=./deploy/crds

.PHONY: check-generate
check-generate: generate ## fail if the committed generated files differ from a fresh generate
	git diff --exit-code -- enforcer sensor kube deploy/crds

.PHONY: test
test: ## run the whole test suite (as root: kernel tests load the real programs)
	@# -p 1: kernel tests of different packages attach programs at the same
	@# cgroup root and count them; run the packages one at a time.
	$(GO) test -p 1 -count=1 -timeout 30m $(PKGS)

# A real kube-apiserver and etcd for the Kubernetes tests, built from the Go
# module proxy (tools/apiserver, tools/etcd; neither is packaged at a usable
# version). The first build takes 10-17 minutes.
KUBE_ASSETS ?= .cache/kube
KUBE_VERSION := $(shell awk '$$2 == "k8s.io/kubernetes" {print $$3}' tools/apiserver/go.mod)

$(KUBE_ASSETS)/kube-apiserver: tools/apiserver/go.mod tools/apiserver/go.sum
	$(GO) -C tools/apiserver build -trimpath -o $(abspath $@) \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=$(patsubst v%,%,$(word 1,$(subst ., ,$(KUBE_VERSION)))) -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION)))" \
		k8s.io/kubernetes/cmd/kube-apiserver

$(KUBE_ASSETS)/etcd: tools/etcd/go.mod tools/etcd/go.sum
	$(GO) -C tools/etcd build -trimpath -o $(abspath $@) -ldflags "-s -w" go.etcd.io/etcd/server/v3

.PHONY: kube-assets
kube-assets: $(KUBE_ASSETS)/kube-apiserver $(KUBE_ASSETS)/etcd ## build kube-apiserver and etcd for the Kubernetes tests into .cache/kube

.PHONY: test-kube
test-kube: kube-assets ## the Kubernetes tests, against a real kube-apiserver and etcd (as root: the e2e ones load the gate)
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) AGENTFENCE_KUBE_TESTS=1 $(GO) test -p 1 -count=1 ./kube/... ./deploy/...
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) AGENTFENCE_KUBE_TESTS=1 $(GO) test -count=1 -run '^TestKubernetes' ./e2e

.PHONY: bench
bench: ## run the benchmarks (as root); numbers go to docs/benchmarks.md
	$(GO) test -p 1 -run '^$$' -bench . -benchmem -count 1 -timeout 60m $(PKGS)

.PHONY: bench-system
bench-system: ## the whole-system benchmark (issue 17; as root): daemon, member loops, no enforcement and nftables side by side
	@command -v nft >/dev/null || apt-get install -y -qq --no-install-recommends nftables
	$(GO) test -run '^$$' -bench 'WholeSystem' -benchtime $(or $(ROUNDS),7)x -count 1 -timeout 30m ./e2e

.PHONY: bench-kube
bench-kube: kube-assets ## the Kubernetes figures (issue 15; as root): AgentSession to enforced, retirement, daemon memory and API requests at rest
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) AGENTFENCE_KUBE_TESTS=1 $(GO) test -run '^$$' -bench 'KubernetesSessionToEnforced' -benchtime 1000x -count 1 -timeout 60m ./kube/node
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) AGENTFENCE_KUBE_TESTS=1 $(GO) test -run '^$$' -bench 'KubernetesRetirement' -benchtime 50x -count 1 -timeout 60m ./kube/node
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) AGENTFENCE_KUBE_TESTS=1 $(GO) test -run '^$$' -bench 'KubernetesDaemonMemory' -benchtime 1x -count 1 -timeout 60m ./e2e

.PHONY: vmtest
vmtest: ## kernel tests in qemu on Debian 5.10/6.1/6.12 + this host (as root; KERNELS="6.1 host" PKGS="enforcer e2e")
	./vmtest/vmtest.sh

.PHONY: demo
demo: build ## run the demo on this host (as root)
	BIN=$(BIN) ./demo/demo.sh

.PHONY: lint
lint: ## gofmt, go vet, go.mod as go mod tidy would write it, and a CLI that links no kernel code
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) mod tidy -diff
	@! $(GO) list -deps ./cmd/agentfence | grep -E 'cilium/ebpf|agentfence/(enforcer|sensor|session|doctor)$$' || { echo "the CLI links the daemon's kernel code (see api/v1)"; exit 1; }

.PHONY: clean
clean: ## remove bin/
	rm -rf $(BIN)
