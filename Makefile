# The README's test command is `make test`; .ci/run calls exactly that.
GO ?= go

.PHONY: test test-unit test-integration services vet fmt-check bench run build

# test starts (installing if missing) the real PostgreSQL and Redis on loopback, then runs
# every test with the race detector, the real-service ones included.
test: fmt-check vet
	@env=$$(bash scripts/services.sh up) && eval "$$env" && export AGATE_TEST_POSTGRES AGATE_TEST_REDIS AGATE_TEST_OPENFGA_BIN && \
		echo "real services: $$AGATE_TEST_POSTGRES $$AGATE_TEST_REDIS $$AGATE_TEST_OPENFGA_BIN" && \
		$(GO) test -race -count=1 ./...

# test-unit needs nothing installed: the real-service tests are skipped (outside CI).
test-unit: fmt-check vet
	$(GO) test -race -count=1 ./...

# test-integration runs only the tests of real services, against those scripts/services.sh
# starts (installing them if missing): the store suite on PostgreSQL, the Redis adapters,
# the Kafka layer and relay (kfake speaks Kafka's wire protocol), and the gateway end to end
# on them, three replica processes included. CI=true: a missing service fails them, never skips.
INTEGRATION_PKGS ?= ./postgres/ ./redis/ ./kafka/ ./bus/ ./openfga/ ./tenant/...
INTEGRATION_E2E ?= Postgres|Redis|Replica|Kafka

test-integration:
	@env=$$(bash scripts/services.sh up) && set -a && eval "$$env" && set +a && \
		CI=true $(GO) test -race -count=1 $(INTEGRATION_PKGS) && \
		CI=true $(GO) test -race -count=1 -run '$(INTEGRATION_E2E)' ./cmd/agate/

services:
	bash scripts/services.sh up

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
