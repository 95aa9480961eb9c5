# bqsink developer commands. `make test` is what CI runs.
.PHONY: build test test-deploy demo serve fmt fuzz bench bench-go

build:
	go build -o bqsink .

test:
	test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...
	go test -race -count=1 -parallel 8 -timeout 12m ./...  # -parallel: the fault tests mostly wait; the integration package takes about 8 of the 12 minutes

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
