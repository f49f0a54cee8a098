# Ambit's build, test and development entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

MODULES  := apis pkg ztunnel waypoint controller integration
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/ambit-mesh/ambit/pkg/version.Version=$(VERSION)
BIN      := $(CURDIR)/bin
DEV_BIN   = $(shell hack/tools.sh dir dev)
KUBE_BIN  = $(shell hack/tools.sh dir kube)
ETCD_BIN  = $(shell hack/tools.sh dir etcd)
# main packages, per module, built into bin/
CMDS := ztunnel/cmd/ztunnel ztunnel/cmd/ambit-cni waypoint/cmd/waypoint \
	      controller/cmd/controller controller/cmd/ambitctl integration/cmd/ambit-demo integration/cmd/ambit-pause

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the system packages tests need (Debian, as root)
	@hack/deps.sh

.PHONY: tools
tools: ## build pinned tools (kube-apiserver, etcd, kubectl, generators, linters) into bin/tools/
	@hack/tools.sh

.PHONY: build
build: ## build every binary into bin/
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
	  mod=$${c%%/*}; (cd $$mod && CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./$${c#*/}); \
	done
	@echo "built: $$(cd $(BIN) && ls -p | grep -v / | tr '\n' ' ')"

.PHONY: run
run: deps tools build images ## one-machine Kubernetes + Ambit from manifests/ + the sample app; prints what to try; Ctrl-C tears down
	@VERSION=$(VERSION) hack/run.sh

.PHONY: images
images: build ## build OCI image archives of Ambit and the demo apps into bin/images/ (PUSH=registry/prefix to push)
	@VERSION=$(VERSION) hack/images.sh

.PHONY: cluster-up
cluster-up: deps tools ## start the one-machine Kubernetes (idempotent); prints its KUBECONFIG
	@hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the one-machine Kubernetes and remove everything it made (also after a crash)
	@hack/cluster.sh down

.PHONY: generate
generate: tools ## regenerate deepcopy code, CRD YAML and vendored Gateway API CRDs
	@hack/generate.sh "$(DEV_BIN)"

.PHONY: verify-generate
verify-generate: generate ## fail if generated files differ from what is committed
	@git diff --exit-code -- . || { echo "generated files are stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- apis manifests)" || { git status --porcelain -- apis manifests; echo "untracked generated files" >&2; exit 1; }

.PHONY: lint
lint: tools ## gofmt, go vet, staticcheck and go mod tidy on every module
	@hack/lint.sh "$(DEV_BIN)" $(MODULES)

.PHONY: test
test: deps tools test-unit test-envtest test-netns e2e test-conformance ## every tier: unit (-race), envtest, network namespaces, e2e and Gateway API conformance on the one-machine cluster

.PHONY: test-unit
test-unit: ## unit and fuzz-seed tests of every module, with -race
	@hack/gotest.sh unit "" $(MODULES)

.PHONY: test-envtest
test-envtest: tools ## tests against a real kube-apiserver and etcd
	@TEST_ASSET_KUBE_APISERVER=$(KUBE_BIN)/kube-apiserver TEST_ASSET_KUBECTL=$(KUBE_BIN)/kubectl \
	  TEST_ASSET_ETCD=$(ETCD_BIN)/etcd hack/gotest.sh envtest envtest integration

.PHONY: test-netns
test-netns: ## tests in real network namespaces (root)
	@hack/gotest.sh netns netns integration

.PHONY: bench
bench: deps tools ## Go benchmarks of every module, then the data-plane benchmark (root; docs/reference/benchmarks.md)
	@hack/bench.sh $(MODULES)

.PHONY: e2e
e2e: deps tools build images ## end-to-end tests on the one-machine Kubernetes, Ambit installed from manifests/ (root)
	@VERSION=$(VERSION) hack/e2e.sh

.PHONY: conformance
conformance: deps tools build images ## Gateway API conformance suite (Mesh profile) on the one-machine cluster (root); report in docs/conformance/
	@hack/conformance.sh

.PHONY: test-conformance
test-conformance: deps tools build images ## make conformance as a test tier: the report goes to bin/conformance/, not docs/
	@AMBIT_CONFORMANCE_REPORT=$(CURDIR)/bin/conformance/mesh-report.yaml hack/conformance.sh

.PHONY: clean
clean: ## remove built binaries (keeps bin/tools)
	@find $(BIN) -maxdepth 1 -type f -delete 2>/dev/null || true
