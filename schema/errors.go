package schema

import "errors"

// Error classes; callers test with errors.Is. A record whose processing
// fails with ErrWireFormat, ErrNotFound, ErrUnsupported, ErrIncompatible or
// ErrDecode can never be written, however often it is retried.
// ErrUnsupported and ErrIncompatible from Registry.Schema are for every record
// of that schema ID; ErrDecode is for one record. ErrUnauthorized and ErrTLS
// are configuration problems, not the record's. Any other error from
// Registry.Schema or Registry.Check is transient (network, timeout, 5xx,
// registry busy, cancelled context) and the record should be retried.
var (
	// ErrWireFormat: the Kafka record value is not in the Confluent wire
	// format (magic byte 0, 4-byte schema ID, Avro body).
	ErrWireFormat = errors.New("invalid wire format")

	// ErrNotFound: the registry answered that the schema ID, or a subject
	// version it references, does not exist. It is not cached for good:
	// Registry.Schema returns it again without a request for a backoff (1s,
	// doubling per consecutive failure, at most 10s), then asks again, so a
	// schema registered late is found.
	ErrNotFound = errors.New("schema not found")

	// ErrUnauthorized: the registry refused the credentials (HTTP 401 or
	// 403). It is a configuration problem, not the record's: no record can be
	// read until the credentials (or the registry's ACLs) are fixed, so the
	// caller should stop and alert rather than reject records. The message
	// names the keys to fix, never their values. Registry.Schema remembers it
	// for the same backoff as ErrNotFound; Registry.Check returns it at
	// startup.
	ErrUnauthorized = errors.New("the registry refused the credentials")

	// ErrTLS: the TLS handshake with the registry failed verification: its
	// certificate is not signed by a trusted CA or not for the name checked,
	// or the registry refused ours (or wanted one). Like ErrUnauthorized it
	// is a configuration problem, not the record's; the message names the
	// key to fix (schema_registry.tls.ca_file, server_name, cert_file).
	// Registry.Check returns it at startup; Registry.Schema remembers it
	// for the same backoff as ErrNotFound.
	ErrTLS = errors.New("TLS verification failed")

	// ErrUnsupported: the writer schema cannot be parsed or has no BigQuery
	// mapping (a null-only field, a recursive type, column names that clash
	// in BigQuery, a reference cycle, a non-Avro schema). It is cached per
	// schema ID, since an ID's text never changes.
	ErrUnsupported = errors.New("unsupported schema")

	// ErrIncompatible: a writer schema changed its subject's previous
	// version in a way a BigQuery table cannot absorb: a top-level field
	// renamed without an alias (a field of the previous version is gone and a
	// new field with the same column type does not name it in "aliases"). The
	// message names the subject, both versions, both columns with their
	// types, and the fix. It is cached per schema ID, like ErrUnsupported.
	ErrIncompatible = errors.New("incompatible schema change")

	// ErrDecode: the Avro body does not decode under its writer schema, or
	// holds a value BigQuery cannot store (invalid UTF-8, a date out of
	// range, a NULL array element). The message names the field path.
	ErrDecode = errors.New("undecodable record")

	// ErrEnvelope: a writer schema does not fit a ChangeSpec (see
	// Schema.ChangeRow): not the envelope the spec names, or sequence
	// fields it does not have. Such an error is ErrUnsupported too: no
	// record of the schema can be written under that spec. It is about the
	// pair (writer schema, spec), never one record.
	ErrEnvelope = errors.New("schema does not fit the change spec")
)
