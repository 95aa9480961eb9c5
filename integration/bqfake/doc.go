// Package bqfake is an in-process BigQuery test server. It speaks BigQuery's
// real protocols on loopback sockets, so code under test uses the unmodified
// Go clients exactly as against BigQuery:
//
//	srv, err := bqfake.New(bqfake.Dataset("proj", "ds"))
//	defer srv.Close()
//	bqc, err := bigquery.NewClient(ctx, "proj",
//		option.WithEndpoint(srv.RESTEndpoint()), option.WithoutAuthentication())
//	wc, err := storage.NewBigQueryWriteClient(ctx, // or managedwriter.NewClient(ctx, "proj", ...)
//		option.WithEndpoint(srv.GRPCEndpoint()), option.WithoutAuthentication(),
//		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
//
// # REST
//
// datasets.insert/get/delete, tables.insert/get/list/patch/update/delete and
// tabledata.list (paged with pageToken/maxResults, f/v cells, TIMESTAMP as
// int64 µs when formatOptions.useInt64Timestamp is set, which the Go client
// always does). Errors use Google's JSON error format (the Go client returns
// *googleapi.Error): 404 notFound, 409 duplicate, 400 invalid, 412
// conditionNotMet when If-Match does not carry the table's current etag.
// Every tables.insert/patch/update changes the etag; appending rows does not.
// Schema patches follow BigQuery: columns may be added (NULLABLE or REPEATED,
// nested RECORD fields too) and REQUIRED relaxed to NULLABLE; dropping,
// renaming, retyping, tightening a mode or adding a REQUIRED column is
// refused with 400 and a message naming the column. Column types beyond the
// project's contract: GEOGRAPHY and JSON (as strings); others are refused.
// STRING and BYTES columns may carry maxLength (BigQuery's parameterized
// STRING(10)); it is stored and returned by tables.get, and refused on other
// types.
//
// # Table layout
//
// tables.insert, get, list, patch and update (PUT) store and return, as
// BigQuery's REST API does, timePartitioning (type DAY, HOUR, MONTH or YEAR;
// field; expirationMs, an int64 and so a JSON string such as "34560000000"),
// requirePartitionFilter, clustering.fields, description and labels, so the
// Go client's TableMetadata round-trips. A timePartitioning without field is
// ingestion-time partitioning (the _PARTITIONTIME pseudo column): stored,
// not simulated. The deprecated timePartitioning.requirePartitionFilter sets
// the table's requirePartitionFilter and is echoed where it was sent; false
// there clears only a requirement set there (the Go client sends false with
// every partitioning update). rangePartitioning is stored unchecked.
//
// Refused with 400 "invalid" (nothing is created or changed); messages
// marked * are BigQuery's as reported from its answers, the others follow
// their pattern, BigQuery's documentation not quoting its errors:
//   - partitioning field absent*: "The field specified for partitioning
//     cannot be found in the schema."; a RECORD subfield ("rec.ts")*: "The
//     field specified for partitioning can only be a top-level field.";
//   - not TIMESTAMP, DATE or DATETIME*: "The field specified for time
//     partitioning can only be of type TIMESTAMP, DATE or DATETIME. The type
//     found is: STRING."; REPEATED: "The field specified for time
//     partitioning can only be NULLABLE or REQUIRED. The mode found is:
//     REPEATED."; HOUR on a DATE: "The field specified for hourly
//     partitioning can only be of type TIMESTAMP or DATETIME. The type found
//     is: DATE.";
//   - another type: "Invalid value for timePartitioning.type: WEEK. The
//     supported types are DAY, HOUR, MONTH and YEAR." (none: "Missing required
//     field: timePartitioning.type"); a negative expirationMs;
//   - requirePartitionFilter without partitioning*: "Either interval
//     partition or range partition should be specified.";
//   - more than four clustering fields: "Too many clustering fields: 5. At
//     most 4 clustering fields are allowed."; a clustering field absent*: "The
//     field specified for clustering cannot be found in the schema. Invalid
//     field: x."; a RECORD subfield*: "Fields specified for clustering can
//     only be top-level fields. Invalid field: rec.x."; a type BigQuery does
//     not cluster on (FLOAT, BYTES, TIME, JSON, RECORD; it clusters on
//     BIGNUMERIC, BOOL, DATE, DATETIME, GEOGRAPHY, INT64, NUMERIC, STRING,
//     TIMESTAMP)*: "Field price has type FLOAT, which is not supported for
//     clustering."; REPEATED: "Fields specified for clustering can only be
//     NULLABLE or REQUIRED. Invalid field: tags.";
//   - labels (keys of 1 to 63 characters starting with a lowercase or
//     international letter, values of up to 63, both of lowercase or
//     international letters, digits, '_' and '-'): `Label key "Team" has
//     invalid characters.`, `Label value "Supply" has invalid characters.`*
//     (also when too long); more than 64: "Too many labels: 65. A table can
//     have at most 64 labels."
//
// tables.patch keeps what it does not send: a patch of the schema alone
// keeps the layout. It may change description, labels (merged; a null value
// deletes one), clustering (null or no fields removes it; checked against
// the patched schema), requirePartitionFilter and
// timePartitioning.expirationMs. A different partitioning type or field is
// refused with "Cannot change partitioning/clustering spec."*, a
// timePartitioning on an unpartitioned table with "Cannot convert non
// partitioned table to partitioned table."*, a null one on a partitioned
// table with "Cannot change partitioned table to non partitioned table."*;
// an omitted type or field means unchanged. tables.update replaces the
// resource: it clears the description, friendlyName, expirationTime,
// labels, clustering and requirePartitionFilter it omits; an omitted schema
// or timePartitioning is kept.
//
// # Expired partitions
//
// BigQuery documents (Manage partitioned tables, "Set the partition
// expiration") that a partition's expiration counts from its boundary in
// UTC: a DAY partition with a 6 h expiration expires at 06:00 UTC the day
// after, i.e. expirationMs after the partition's end. It deletes an expired
// partition, and "if data is being copied or inserted to a table partitioned
// by time-unit column, any partitions older than partition expiration
// configured for the table are expired immediately". Nothing documents an
// error for such rows, and reported measurements agree: the write succeeds,
// the rows are gone at once, and rows in __NULL__ (a NULL partitioning
// value) and __UNPARTITIONED__ (before 1960-01-01 or from 2160-01-01) are
// kept, those partitions having no time to expire. So bqfake accepts an
// append whose rows fall in an expired partition (default stream or any
// other: no row error, offsets advance) and drops those rows when they are
// committed; rows also go when their partition ages past the expiration or a
// patch shortens it. tabledata.list, numRows, Rows and RowCount never show
// them; ExpiredRows counts them. Whether BigQuery shows such rows briefly,
// while streamed data waits in __UNPARTITIONED__, is not documented; bqfake
// never does. Ingestion-time partitions are not expired (their rows land in
// the current partition). The Storage Write API documentation also limits
// time-unit column partitioned tables to values from 10 years in the past to
// 1 year in the future without saying what happens outside; bqfake accepts
// them.
//
// # Storage Write API
//
// CreateWriteStream (COMMITTED, PENDING, BUFFERED), GetWriteStream,
// AppendRows, FinalizeWriteStream, BatchCommitWriteStreams and FlushRows.
// Every table has the default stream "projects/P/datasets/D/tables/T/streams/_default",
// which commits on append and takes no offsets. Explicit streams honour
// offsets: an append whose offset equals the stream's end is written; below
// the end it fails with ALREADY_EXISTS (StorageError OFFSET_ALREADY_EXISTS)
// and nothing is written; past the end with OUT_OF_RANGE
// (OFFSET_OUT_OF_RANGE); an append without an offset goes to the end. Both
// errors are response errors: the connection stays open. Rows of a
// COMMITTED stream are readable once their append is acknowledged, and
// GetWriteStream reports its commit_time equal to its create_time. Appends
// to a finalized stream fail with INVALID_ARGUMENT and the StorageError
// STREAM_FINALIZED, as BigQuery's docs describe; to a stream that does not
// exist (never created, or lost: see LoseStream), with NOT_FOUND and
// STREAM_NOT_FOUND. Explicit streams follow the table's schema as the
// default stream does: CreateWriteStream answers NOT_FOUND for a table the
// write path cannot see yet (SetSchemaDelay), and updated_schema works the
// same on both (below).
//
// The order of checks for one request, where BigQuery's documentation is
// silent, is: the stream (NOT_FOUND; committed or finalized; an offset on the
// default stream), then the writer schema against the table, then every
// row (row_errors), and only then the offset. So a request whose offset is
// already written but which carries a row BigQuery now rejects fails with
// row_errors, not ALREADY_EXISTS: a writer learns that a row's fate
// changed.
//
// One AppendRows connection carries requests in order, answered in order.
// The first request for a stream on a connection must name write_stream and
// carry proto_rows.writer_schema; later ones may omit both (inheriting them,
// per stream) or send a new writer_schema, which applies from that request.
// Rows are decoded from the DescriptorProto (as adapt.NormalizeDescriptor
// makes it) and checked against the table schema as the write path sees it
// (see Server.SetSchemaDelay). Proto types accepted per column are BigQuery's
// documented conversions: the project's contract encoding (NUMERIC,
// BIGNUMERIC, TIME, DATETIME as strings; DATE int32; TIMESTAMP int64 µs) and
// alternatives such as packed bytes for NUMERIC, packed int64 for TIME and
// DATETIME, google.protobuf wrapper types and google.protobuf.Timestamp.
// Column names match case-insensitively; adapt's column_name annotation is
// honoured.
//
// Errors of the whole request arrive in its response's error field (with
// managedwriter, AppendResult.GetResult returns them); the connection stays
// open:
//   - descriptor fields without a column: INVALID_ARGUMENT "Input schema has
//     more fields than BigQuery schema, extra fields: 'a,rec.b'" with a
//     StorageError SCHEMA_MISMATCH_EXTRA_FIELDS detail;
//   - a descriptor field whose proto type or repetition does not fit its
//     column: INVALID_ARGUMENT "The proto field mismatched with BigQuery field
//     at ..." (BigQuery rejects the schema, not single rows);
//   - unknown table or stream, or a table not yet visible: NOT_FOUND.
//
// Row errors: a row missing a REQUIRED value, or with an invalid or out of
// range value (bad decimal, NUMERIC overflow after rounding to the column's
// scale, bad DATE/TIME/DATETIME, invalid UTF-8, a STRING or BYTES longer than
// the column's maxLength, ...), makes the response carry INVALID_ARGUMENT
// plus row_errors (index, FIELDS_ERROR, a message starting "Field <column
// path>:", e.g. "Field reference: STRING(10) has maximum length 10 but got a
// value with length 12"; STRING length counts characters, BYTES bytes). As
// in BigQuery, no row of such a request is written.
//
// updated_schema: once the schema the write path sees differs from the one
// it saw when the stream was first used on the connection (or since the last
// writer_schema on it), every response carries the new schema in
// updated_schema. Sending a new writer_schema, or reconnecting,
// makes the current schema the baseline again.
//
// # Fault injection on the wire
//
// FailAppends(n, code) consumes one count per AppendRows request received:
//   - UNAVAILABLE, INTERNAL, ABORTED, DEADLINE_EXCEEDED, CANCELLED and
//     UNKNOWN end the AppendRows stream with that status, like a lost
//     backend. The request and every request pipelined behind it on the
//     connection are not written. managedwriter fails all of them with that
//     code, then opens a new connection on the next append; with
//     EnableWriteRetries it resends them (UNAVAILABLE, INTERNAL, ABORTED,
//     DEADLINE_EXCEEDED, CANCELLED are retryable; UNKNOWN is not).
//   - every other code is answered in that request's response and the
//     connection stays open. RESOURCE_EXHAUSTED carries BigQuery's message
//     "Exceeds 'AppendRows throughput' quota...", which managedwriter retries
//     when EnableWriteRetries is set; FAILED_PRECONDITION is retried too;
//     INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED etc. are not.
//
// FailREST(n, status) answers the next n REST calls with that HTTP status and
// a JSON error whose reason matches it (500 internalError, other 5xx
// backendError, 429 rateLimitExceeded, 401 authError, 403 accessDenied, 404
// notFound, 409 duplicate, 412 conditionNotMet, anything else invalid),
// whether or not the path exists. The Go bigquery client
// silently retries 5xx and rateLimitExceeded with a backoff starting at about
// one second, so only other codes (or n larger than its patience) surface.
//
// LoseAnswers(n) processes the next n append requests as usual (rows
// written, offsets advanced, errors decided) and then, instead of answering,
// ends their connection with UNAVAILABLE, as when a connection breaks after
// BigQuery did the work; requests pipelined behind such a request are not
// processed. A writer that retries at the same offset then meets
// ALREADY_EXISTS. AnswersLost counts them.
//
// RejectRows(pred) rejects every row pred matches (it sees the decoded row
// as Rows returns it) with row_errors, as for an invalid row; nil clears it.
// With a predicate that matches a row only from its second appearance on,
// a test makes a row's fate change between two attempts. Bench mode does
// not decode rows and ignores it.
//
// LoseStream(name) and FinalizeStream(name) do to an explicit stream what
// BigQuery may do behind a writer's back (garbage-collect it; finalize it):
// NOT_FOUND, or STREAM_FINALIZED, from then on; the rows stay. WriteStreams
// lists the explicit streams created for a table, StreamLength a stream's
// end offset, OffsetConflicts how many appends met ALREADY_EXISTS and
// OUT_OF_RANGE.
//
// FailUnary(n, code) fails the next n unary Storage Write calls
// (GetWriteStream, CreateWriteStream, ...) with code, e.g. UNAUTHENTICATED.
//
// SetAppendLatency(d) holds every AppendRows response until d after its
// request arrived; a long d models a backend that takes requests and never
// answers (the client's cancellation still ends the stream).
// StallReads(true) stops reading AppendRows requests on every connection
// (one a connection is already waiting for is still taken), while requests
// read are answered as usual; HTTP/2 flow control then blocks a client's
// Send once its requests overflow the stream's window (gRPC-Go's is 64 KiB
// at first and at most 16 MiB). StallReads(false) resumes reading.
// AppendsReceived counts the requests read so far, so a test knows a
// request is in the server's hands before it stalls reads.
// SetRESTLatency(d) holds every REST response likewise (a client that gives
// up first reads nothing). SetSchemaDelay(d) delays schema visibility on the
// write path.
//
// # Emulator quirks
//
// RequireStreamLookup(true) makes AppendRows refuse a table's default
// stream, as goccy's bigquery-emulator v0.6.6 does, unless GetWriteStream
// answered for that stream name before: goccy registers the default stream
// per name, server-wide and for good, on the first GetWriteStream that finds
// its table. The refusal ends the connection with UNKNOWN "failed to append
// rows: failed to get stream from <name>". Google's managedwriter calls
// GetWriteStream before appending, so it never meets this; a client that
// does not fails against goccy. GetWriteStream calls are logged at debug
// ("get write stream", with the stream name) so tests can count them.
//
// Faults below gRPC and HTTP (refused or black-holed connections, a peer
// that stops answering mid-stream) are integration/netfault's job: put a
// netfault.Proxy in front of either endpoint.
//
// # Keepalive
//
// The gRPC server enforces keepalive like Google's front ends: client pings
// at most every 25 s are accepted, with or without active streams, so a
// client pinging every 30 s keeps its connection; faster pings get GOAWAY
// too_many_pings.
//
// Not modelled: SQL queries and jobs (so neither partition pruning nor the
// requirePartitionFilter check of queries), tabledata.insertAll, partition
// decorators, the Storage Read API, Arrow rows, missing-value
// interpretations and default values, integer-range partitioning rules,
// quotas other than the 10 MB request limit.
package bqfake
