# bqsink developer commands. `make test` is what CI runs.
.PHONY: build test test-deploy demo serve fmt fuzz bench

build:
	go build -o bqsink .

test:
	test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...
	go test -race -count=1 -parallel 8 ./...  # -parallel: the fault tests mostly wait

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

bench:
	go test ./schema ./bq -run '^$$' -bench . -benchmem
	go test ./integration -run '^$$' -bench Pipeline -benchtime 5x
