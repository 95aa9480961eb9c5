package bq

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
)

// Any answer from the Storage Write endpoint proves it reachable: emulators
// answer the probe with codes BigQuery does not use there (goccy's answers
// UNKNOWN). Only no answer, a timeout or refused credentials fail Check.
func TestCheckStorageWriteAnswers(t *testing.T) {
	s := newFake(t)
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.Project, cfg.Dataset = testProject, testDataset
	cfg.Endpoint, cfg.GRPCEndpoint = s.RESTEndpoint(), s.GRPCEndpoint()
	shortTimeouts(&cfg)
	c, err := NewClient(t.Context(), cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	// failing: the key the error must name; "" means Check succeeds.
	failing := map[codes.Code]string{
		codes.Unavailable:      "bigquery.grpc_endpoint " + s.GRPCEndpoint() + " (Storage Write API): unreachable",
		codes.DeadlineExceeded: "bigquery.grpc_endpoint " + s.GRPCEndpoint() + " (Storage Write API): timed out",
		codes.Unauthenticated:  "bigquery.credentials_file: permission denied: the Storage Write API refused",
	}
	for code := codes.OK; code <= codes.Unauthenticated; code++ {
		t.Run(code.String(), func(t *testing.T) {
			logs.TakeAll()
			s.FailUnary(1, code)
			defer s.FailUnary(0, codes.OK)
			err := within(t, shortTimeout+slack, "Check", func() error { return c.Check(t.Context()) })
			want := failing[code]
			if want == "" {
				if err != nil {
					t.Fatalf("Check after an answer with %s: %v, want nil", code, err)
				}
				if code == codes.OK {
					return // the probe table does not exist: NOT_FOUND
				}
				found := false
				for _, e := range logs.FilterMessage("the Storage Write API answered the startup probe").All() {
					f := e.ContextMap()
					found = found || (f["code"] == code.String() && strings.Contains(f["message"].(string), "bqfake: injected"))
				}
				if !found {
					t.Errorf("no debug line with code %s and the server's message; logged %v", code, logs.All())
				}
				return
			}
			if err == nil {
				t.Fatalf("Check after %s succeeded", code)
			}
			t.Logf("Check: %v", err)
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q", want)
			}
			if errors.Is(err, ErrPermissionDenied) != (code == codes.Unauthenticated) {
				t.Errorf("errors.Is(err, ErrPermissionDenied) = %v", !(code == codes.Unauthenticated))
			}
			if errors.Is(err, ErrDatasetNotFound) {
				t.Error("classed ErrDatasetNotFound")
			}
			if code == codes.Unauthenticated && !strings.Contains(err.Error(), "bqfake: injected Unauthenticated failure of GetWriteStream") {
				t.Error("the server's message is lost")
			}
		})
	}
}

// No answer at all fails within Timeout, or as soon as the caller gives up.
func TestCheckStorageWriteUnreachable(t *testing.T) {
	s := newFake(t)
	t.Run("closed port", func(t *testing.T) {
		addr := closedPort(t)
		c := newTestClient(t, s, shortTimeouts, func(c *Config) { c.GRPCEndpoint = addr })
		err := within(t, shortTimeout+slack, "Check", func() error { return c.Check(t.Context()) })
		if err == nil || !strings.Contains(err.Error(), "bigquery.grpc_endpoint "+addr+" (Storage Write API): ") {
			t.Fatalf("Check against a closed port: %v, want an error naming bigquery.grpc_endpoint", err)
		}
		if errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrDatasetNotFound) {
			t.Errorf("an unreachable endpoint has a permanent class: %v", err)
		}
	})
	black := proxy(t, s.GRPCEndpoint())
	if err := black.Freeze(); err != nil {
		t.Fatal(err)
	}
	t.Run("caller gives up", func(t *testing.T) {
		// A long Timeout: only the caller's context can end the probe.
		c := newTestClient(t, s, func(c *Config) { c.GRPCEndpoint, c.Timeout = black.Addr(), time.Minute })
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(300*time.Millisecond, cancel)
		err := within(t, slack, "Check", func() error { return c.Check(ctx) })
		if err == nil || !strings.Contains(err.Error(), "bigquery.grpc_endpoint "+black.Addr()+" (Storage Write API): no answer in time") {
			t.Fatalf("Check cancelled while probing: %v, want an error naming bigquery.grpc_endpoint", err)
		}
	})
}
