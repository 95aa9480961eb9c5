# bqsink developer commands. `make test` is what CI runs.
.PHONY: build test test-deploy demo serve fuzz bench bench-go

build:
	go build -o bqsink .

# The packages the test target runs in three steps (see test).
UNIT_PKGS = $$(go list ./... | grep -v -e '/integration$$' -e '/integration/crash$$' -e '/integration/fault$$' -e '/integration/memory$$')
INTEGRATION_PKGS = ./integration ./integration/crash ./integration/fault

# go test runs the packages of one step at the same time, -p of them at
# once. The integration packages' tests mostly wait on fault windows,
# sessions and backoffs (-p 4, -parallel 8), but with -race they keep two
# CPUs busy, so what measures CPU time runs in a step of its own: the unit
# tests bound operations to fractions of a second, and integration/memory
# bounds the sink's throughput under its memory cap and the daemon's RSS.
test:
	test -z "$$(gofmt -l $$( (git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go') | while read -r f; do [ ! -e "$$f" ] || echo "$$f"; done))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...
	go test -race -count=1 -timeout 12m -p 4 $(UNIT_PKGS)
	go test -race -count=1 -timeout 12m -p 4 -parallel 8 $(INTEGRATION_PKGS)
	go test -race -count=1 -timeout 12m ./integration/memory

# The deployment files' checks (deploy/ is a module of its own; CI runs this too).
test-deploy:
	cd deploy && go vet ./... && go test -count=1 ./...

demo:
	go run ./integration/demo

serve:
	go run ./integration/demo -serve

fuzz:
	go test ./schema -run '^$$' -fuzz FuzzSplit -fuzztime 60s
	go test ./schema -run '^$$' -fuzz FuzzDecode -fuzztime 60s
	go test ./schema -run '^$$' -fuzz FuzzTranscode -fuzztime 60s

# The daemon binary against 1,000,000 waiting records on the local stack,
# next to the floor (read and decode only): wall, CPU per record, peak RSS.
# Flags: go run ./integration/bench -h (e.g. -schema delivery, -rate 20000).
bench:
	go run ./integration/bench

# The Go benchmarks of the packages.
bench-go:
	go test ./schema ./bq -run '^$$' -bench . -benchmem
	go test ./integration -run '^$$' -bench Pipeline -benchtime 5x
