# The README's commands. `make demo` shows a request crossing a real tunnel;
# `make test` runs every test CI runs.
GO ?= go

.PHONY: all build demo test test-unit test-e2e fuzz fuzz-smoke vet fmt-check clean

all: build

build:
	$(GO) build -o bin/ ./cmd/tunnel-server ./cmd/tunnel-agent

demo:
	$(GO) run ./cmd/tunnel-server demo

test: fmt-check vet test-unit test-e2e fuzz-smoke

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet ./...

# In-process tests of the library, certificates and commands.
test-unit:
	$(GO) test -race -count=1 ./...

# Real processes, the real kube-apiserver egress selector client, and
# network namespaces (the namespace test needs root and iproute2).
test-e2e:
	cd e2e && $(GO) test -race -count=1 ./...

# Every fuzz target of network decoders: briefly in `make test` (a count, not
# a time: very short -fuzztime runs can end in a spurious "context deadline
# exceeded"), long with
# `make fuzz FUZZTIME=30m`.
FUZZ_TARGETS = FuzzReadConnect FuzzDecodeDialRequest FuzzDecodeDialResponse FuzzDecodeHello
FUZZTIME ?= 10m

fuzz-smoke:
	$(MAKE) fuzz FUZZTIME=50000x

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./tunnel/ || exit 1; \
	done

clean:
	rm -rf bin
