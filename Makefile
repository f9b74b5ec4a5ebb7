# The README's test command is `make test`; .ci/run calls exactly that.
GO ?= go

.PHONY: test vet fmt-check bench run build

test: fmt-check vet
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bench/

build:
	$(GO) build -trimpath -o bin/agate ./cmd/agate

run:
	$(GO) run ./cmd/agate
