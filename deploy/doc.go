// Package deploy holds bqsink's deployment files and the tests that keep
// them honest: kubernetes/ (a kustomize base, components and one overlay
// per common setup, each applied with kubectl apply -k), monitoring/ (alert
// rules and the Grafana dashboard) and config.example.yaml (the production
// config of the SCRAM overlay, and the README's docker run).
//
// The tests build every overlay and monitoring/ with kustomize's Go API, as
// kubectl apply -k does, and check what they produce.
//
// It is a module of its own so that what its tests need (Kubernetes API
// types, Prometheus' PromQL parser) stays out of the daemon's go.mod. It
// imports nothing of the daemon: the tests build the daemon and the local
// stack from the parent module (go build in ..) and talk to them as a user
// would, through `bqsink -check` and /metrics.
//
//	cd deploy && go test ./...
package deploy
