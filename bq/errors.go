package bq

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error classes. Errors from bq wrap at most one of these (test with
// errors.Is), including AppendError.Err and the errors EnsureSchema and
// Check return; ErrTableConfig and its kind ErrPrimaryKey count as one. An
// error wrapping none of them is transient: retrying later may succeed.
var (
	// ErrClosed is returned by Append once the Client is closed, and is the
	// cause of Results that Close ended.
	ErrClosed = errors.New("bq client closed")

	// ErrDatasetNotFound: the dataset does not exist. bq never creates
	// datasets; an operator must.
	ErrDatasetNotFound = errors.New("dataset not found")
	// ErrTableNotFound: the table does not exist and auto_create_tables is
	// off. Permanent until someone creates it.
	ErrTableNotFound = errors.New("table not found")
	// ErrPermissionDenied: BigQuery refused the credentials or they lack a
	// permission (HTTP 401, HTTP 403 other than quota and rate limits, gRPC
	// UNAUTHENTICATED or PERMISSION_DENIED). An operator must fix it.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrIncompatible: a schema change BigQuery cannot make in place (see
	// IncompatibleError), or a needed change while auto_update_schema is
	// off. Retrying does not help.
	ErrIncompatible = errors.New("incompatible schema change")

	// ErrNoSchema: Row was called before EnsureSchema succeeded for the
	// table (there is no Format yet). Call EnsureSchema, then Row again.
	ErrNoSchema = errors.New("table schema not known yet")
	// ErrUnknownColumn: a value for AppendColumn names a column the table's
	// known schema lacks. Call EnsureSchema with a schema that has it, then
	// encode again with the new Format.
	ErrUnknownColumn = errors.New("unknown column")
	// ErrRowTooLarge: the row alone does not fit in a request under
	// max_request_bytes. It can never be written as it is.
	ErrRowTooLarge = errors.New("row too large")
	// ErrRowRejected is wrapped by AppendError.Rejected entries for rows
	// BigQuery named in its row errors (a value it refuses, such as a string
	// longer than the column's maximum length). They can never be written as
	// they are. AppendError.Err wraps it when the Retry rows failed only for
	// sharing a request with such rows: they may be sent again at once.
	ErrRowRejected = errors.New("row rejected by BigQuery")

	// ErrStreamNotFound: the explicit write stream does not exist (never
	// did, or BigQuery garbage-collected it). Open or create another.
	ErrStreamNotFound = errors.New("write stream not found")
	// ErrStreamFinalized: the explicit write stream was finalized and takes
	// no more rows. Open or create another.
	ErrStreamFinalized = errors.New("write stream finalized")
)

// classError gives err a class without changing its message.
type classError struct{ err, class error }

func (e *classError) Error() string   { return e.err.Error() }
func (e *classError) Unwrap() []error { return []error{e.err, e.class} }

// withClass makes errors.Is(err, class) true; a nil class leaves err as is.
func withClass(err, class error) error {
	if err == nil || class == nil {
		return err
	}
	return &classError{err: err, class: class}
}

// permanent reports whether err belongs to a class an operator must fix,
// which a cause should not hide behind a transient one.
func permanent(err error) bool {
	return errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrTableNotFound) || errors.Is(err, ErrDatasetNotFound) ||
		errors.Is(err, ErrStreamNotFound) || errors.Is(err, ErrStreamFinalized) || errors.Is(err, ErrTableConfig) // ErrPrimaryKey too
}

// quotaReasons are 403 reasons that mean "slow down", not "not allowed".
var quotaReasons = []string{"rateLimitExceeded", "quotaExceeded", "userRateLimitExceeded"}

// restClass classifies a REST error: ErrPermissionDenied, ErrDatasetNotFound
// or nil (transient, or for the caller to judge by status).
func restClass(err error) error {
	var gerr *googleapi.Error
	if !errors.As(err, &gerr) {
		return nil
	}
	switch gerr.Code {
	case http.StatusUnauthorized:
		return ErrPermissionDenied
	case http.StatusForbidden:
		for _, item := range gerr.Errors {
			if slices.Contains(quotaReasons, item.Reason) {
				return nil
			}
		}
		return ErrPermissionDenied
	case http.StatusNotFound:
		if strings.Contains(gerr.Message, "Not found: Dataset") {
			return ErrDatasetNotFound
		}
	}
	return nil
}

// grpcClass classifies a Storage Write API error: ErrPermissionDenied or nil.
func grpcClass(err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return ErrPermissionDenied
	}
	return nil
}

// httpStatus returns the HTTP status of a REST error, or 0.
func httpStatus(err error) int {
	var gerr *googleapi.Error
	if errors.As(err, &gerr) {
		return gerr.Code
	}
	return 0
}
