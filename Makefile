# The README's commands. `make demo` shows a request crossing a real tunnel;
# `make test` runs every test CI runs.
GO ?= go

.PHONY: all build demo test test-unit test-e2e fuzz fuzz-smoke churn faults vet fmt-check bench bench-smoke bench-ha clean

all: build

# --version and tunnel_build_info report these (cmd/internal/admin/build.go).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS = -X github.com/tunnel-project/tunnel/cmd/internal/admin.version=$(VERSION) \
	-X github.com/tunnel-project/tunnel/cmd/internal/admin.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/tunnel-server ./cmd/tunnel-agent

demo:
	$(GO) run ./cmd/tunnel-server demo

test: fmt-check vet test-unit test-e2e fuzz-smoke

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet ./...

# In-process tests of the library, certificates and commands; the
# allocation counts once more without the race detector, whose sync.Pool
# drops buffers on purpose.
test-unit:
	$(GO) test -race -count=1 -timeout 30m ./...
	$(GO) test -count=1 -run 'Allocs|BatchBuffers' ./tunnel/

# Real processes, the real kube-apiserver egress selector client, and
# network namespaces (the namespace test needs root and iproute2). -timeout:
# e2e/deploy builds the release binaries and image from a cold build cache
# on a fresh machine, over go test's default 10 minutes per package on two
# busy cores.
test-e2e:
	cd e2e && $(GO) test -race -count=1 -timeout 30m ./...

# The real Kubernetes control plane (e2e/kubernetes, its own module): etcd,
# kube-apiserver and kubectl built from the pinned modules in
# e2e/kubernetes/tools, a virtual-kubelet kubelet API, and the tunnel in all
# three egress modes across network namespaces (needs root and iproute2).
# The first run is a one-time cold build of kube-apiserver, kubectl and etcd
# (20-40 min on two cores), cached by version in
# ${TUNNEL_K8S_CACHE:-$HOME/.cache/tunnel-kubernetes}; a warm run takes
# about 4 min (3-4 min measured on a busy two-core machine).
.PHONY: test-kubernetes
test-kubernetes:
	cd e2e/kubernetes && $(GO) test -count=1 -timeout 80m -v ./...

# Every fuzz target of network decoders: briefly in `make test` (a count, not
# a time: very short -fuzztime runs can end in a spurious "context deadline
# exceeded"), long with
# `make fuzz FUZZTIME=30m`.
FUZZ_TARGETS = FuzzReadConnect FuzzDecodeDialRequest FuzzDecodeDialResponse FuzzDecodeHello \
	FuzzDecodeHelloReply FuzzReadFrame FuzzAdmitHello FuzzDecodeReplicaCount
FUZZTIME ?= 10m

fuzz-smoke:
	$(MAKE) fuzz FUZZTIME=50000x

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./tunnel/ || exit 1; \
	done
	@echo "fuzz the session layer's read loop (tunnel/mux FuzzReadFrame) for $(FUZZTIME)"
	@$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./tunnel/mux/

# The long runs of two tests `make test` runs short (README "Testing"):
# TestChurn with 100,000 tunnels instead of 5,000 (without -race, a few
# minutes), and the fault tests across network namespaces with 64 MiB
# instead of 8 MiB per transfer over the lossy link (needs root).
CHURN_TUNNELS ?= 100000
FAULT_BYTES ?= 67108864

churn:
	$(GO) test -count=1 -v -timeout 60m -run '^TestChurn$$' ./tunnel/ -churn.tunnels=$(CHURN_TUNNELS)

faults:
	cd e2e && $(GO) test -race -count=1 -v -timeout 30m -run 'TestNetns|TestImpaired|Killed' ./process/ -impair.bytes=$(FAULT_BYTES)

# The load tool against a local server, agent and target it starts itself
# (README "Benchmarks"): the full run takes a few minutes and writes its
# figures; bench-smoke is a run of seconds. `make test` does not call
# bench-smoke: test-unit already runs the same --quick --local run
# (benchmarks/tunnel-bench, TestQuickLocal).
BENCH_OUT ?= benchmarks/results/latest

bench:
	$(GO) run ./benchmarks/tunnel-bench --local --json $(BENCH_OUT).json --svg $(BENCH_OUT).svg

bench-smoke:
	$(GO) run ./benchmarks/tunnel-bench --local --quick

# High availability with a fleet (benchmarks/ha_test.go, README "High
# availability"): 1,000 agents, three replicas behind a balancer, the
# production probe interval; one replica restarted; replicas that advertise
# no address, their own, and each other's. `make test` runs it with 30
# agents.
bench-ha:
	$(GO) test -run TestHAFleet -v -timeout 60m ./benchmarks/ -ha-agents 1000 -ha-probe 10s -ha-timeout 15m

# The deploy/ files as code (e2e/deploy: manifests strictly typed, egress
# selector files, flags against the binaries, systemd-analyze), plus the
# real-process checks of sd_notify and of the dashboard's metric names. All
# of it also runs in test-e2e; this is the quick way to check deploy/ edits.
# The attack suite against the real binaries (e2e/attack, README "Threat
# model"): `make test` runs it short; this runs the floods longer and
# larger.
.PHONY: attack
attack:
	cd e2e && $(GO) test -race -count=1 -v -timeout 20m ./attack/ -attack.long

.PHONY: deploy-check
deploy-check:
	cd e2e && $(GO) test -count=1 ./deploy/
	cd e2e && $(GO) test -count=1 -run 'TestSystemdNotify|TestDashboard|TestParseQuery' ./process/

clean:
	rm -rf bin

# ---------------------------------------------------------------------------
# Shipping (deploy/README.md "Image and release archives"). Both binaries
# static and reproducible: CGO_ENABLED=0, -trimpath, -buildvcs=false (the
# version and commit come from LDFLAGS), built into $(DIST_DIR)/OS-ARCH/; build/
# (a module of its own, so go-containerregistry stays out of go.mod and out
# of the binaries) packs them with every timestamp at SOURCE_DATE_EPOCH, the
# last commit's time. One commit built twice gives the same image digest
# and the same SHA256SUMS (e2e/deploy/image_test.go, release_test.go).
#
# `make image`: FROM scratch, both binaries in /usr/local/bin, user 65532,
# no shell; bin/image/oci (OCI layout: skopeo copy oci:bin/image/oci:TAG
# docker://…) and bin/image/tunnel.tar (docker-archive: docker/podman load,
# kind load image-archive, ctr -n k8s.io images import). IMAGE is the
# reference deploy/kubernetes names (its kustomization's images: entry;
# e2e/deploy checks they agree): override both to push elsewhere.
# `make release`: bin/release/tunnel-VERSION-OS-ARCH.tar.gz and SHA256SUMS.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
IMAGE ?= ghcr.io/tunnel-project/tunnel:dev
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGE_DIR ?= bin/image
RELEASE_DIR ?= bin/release
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
DIST_DIR ?= bin/dist
DIST = $(GO) -C build run .

# $(call dist-build,OS,ARCH): both binaries into $(DIST_DIR)/OS-ARCH/.
dist-build = CGO_ENABLED=0 GOOS=$(1) GOARCH=$(2) $(GO) build -trimpath -buildvcs=false \
	-ldflags "$(LDFLAGS)" -o $(DIST_DIR)/$(1)-$(2)/ ./cmd/tunnel-server ./cmd/tunnel-agent

.PHONY: image release

image:
	$(call dist-build,linux,$(IMAGE_ARCH))
	$(DIST) image --bin-dir $(abspath $(DIST_DIR)/linux-$(IMAGE_ARCH)) --arch $(IMAGE_ARCH) \
		--ref $(IMAGE) --version $(VERSION) --revision $(COMMIT) --epoch $(SOURCE_DATE_EPOCH) \
		--oci $(abspath $(IMAGE_DIR)/oci) --tarball $(abspath $(IMAGE_DIR)/tunnel.tar)

release:
	@set -e; for p in $(RELEASE_PLATFORMS); do \
		echo "build $$p"; $(call dist-build,$${p%/*},$${p#*/}); \
	done
	$(DIST) release --dist-dir $(abspath $(DIST_DIR)) $(addprefix --platform ,$(RELEASE_PLATFORMS)) \
		$(addprefix --doc ,$(abspath $(wildcard README.md LICENSE))) \
		--version $(VERSION) --epoch $(SOURCE_DATE_EPOCH) --out $(abspath $(RELEASE_DIR))
