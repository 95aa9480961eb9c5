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
// default stream), then the writer schema against the table, then the
// whole-request CDC checks (see Change data capture), then every row
// (row_errors), and only then the offset. So a request whose offset is
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
// # Change data capture
//
// BigQuery's CDC ("Stream table updates with change data capture") is
// modelled on the _default stream. Messages marked * are reported from
// BigQuery; the others are bqfake's, BigQuery's documentation quoting none.
//
// Primary key: tables.insert, get, patch and update carry
// tableConstraints.primaryKey.columns (and foreignKeys, stored unchecked)
// and maxStaleness (the INTERVAL text "Y-M D H:M:S[.F]" the Go client's
// IntervalValue writes, e.g. "0-0 0 0:15:0"; anything else is refused),
// stored as sent and returned by tables.get. A key is refused with 400
// "invalid" when it names a column the schema lacks ("The field specified
// for primary key cannot be found in the schema. Invalid field: x."), a
// RECORD subfield, a REPEATED column or one column twice, or has more than
// 16 columns ("Too many primary key columns: 17. At most 16 columns are
// allowed in a primary key."). A key without columns is no key. tables.patch
// changes primaryKey and foreignKeys only when sent (null removes them);
// tables.update, replacing the resource, clears an omitted tableConstraints
// and maxStaleness.
//
// Rows: the writer schema may carry two top-level STRING fields besides the
// columns, the pseudo-columns _CHANGE_TYPE and _CHANGE_SEQUENCE_NUMBER
// (names match case-insensitively, as columns do; a table column of the
// same name takes the field instead; another proto type is refused like any
// mismatched field). A row is a CDC row when it sets _CHANGE_TYPE to a
// non-empty value; the empty string counts as unset, as proto3 cannot tell
// them apart. Refused, for the whole request (INVALID_ARGUMENT in the
// response, nothing written), checked after the rows are decoded and before
// their row errors:
//   - CDC rows on a COMMITTED, PENDING or BUFFERED stream: "CDC (rows with
//     _CHANGE_TYPE) is only supported on the _default stream." with the
//     StorageError INVALID_STREAM_TYPE;
//   - CDC rows on a table without primary key: "The table P:D.T does not
//     have a primary key, which is required for CDC (rows with
//     _CHANGE_TYPE).";
//   - rows with and without _CHANGE_TYPE on one AppendRows connection: the
//     first request written on a connection puts it in upsert mode (CDC
//     rows) or insert mode (plain rows), for every stream it carries; a
//     later request, or a row of the same request, of the other kind fails
//     with "The given value is not a valid CHANGE_TYPE in insert mode:
//     UPSERT"* (or DELETE), respectively "... in upsert mode: INSERT" for a
//     row without _CHANGE_TYPE. The connection keeps its mode.
//
// Row errors (FIELDS_ERROR, the request fails with INVALID_ARGUMENT and
// writes nothing): a _CHANGE_TYPE other than UPSERT or DELETE, in any case
// ("Field _CHANGE_TYPE: The given value is not a valid CHANGE_TYPE:
// "INSERT". It must be UPSERT or DELETE."); a malformed
// _CHANGE_SEQUENCE_NUMBER, i.e. not one to four sections of one to 16
// hexadecimal digits (either case) separated by '/' ("Field
// _CHANGE_SEQUENCE_NUMBER: Invalid value ..."); a sequence number on a row
// without _CHANGE_TYPE; a CDC row without sequence number once the table
// has received a row with one (or the same request carries one) — the
// converse is accepted: rows with sequence numbers may follow rows without,
// which then compare lowest. An UPSERT is a whole row: REQUIRED columns
// apply as to any row. A DELETE needs only the key columns.
//
// Applied state: tabledata.list, numRows, Rows and RowCount show the table
// as BigQuery's queries do with changes applied (max_staleness is stored,
// not simulated: changes apply at once). Per primary key value, the change
// with the highest _CHANGE_SEQUENCE_NUMBER wins, sections compared in turn
// as unsigned 64-bit numbers (so FFFFFFFFFFFFFFFF > 1); when one number is
// the other with sections added, the shorter is lower (2 < 2/0 < 2/0/1), and
// no number is lowest of all. On a tie, including changes without numbers,
// the change that arrived later wins, except within one request, where the
// first of the tied rows wins (as reported from BigQuery). An UPSERT that
// wins replaces the key's whole row (absent columns are NULL), in the place
// of the key's first row, a new key's row going to the end; a DELETE that
// wins removes it and is remembered, so an older change arriving later does
// not bring the row back. Keys compare by the values of the key columns;
// NULL equals NULL (the changes of rows whose key column is NULL apply to
// one another, as in a GROUP BY). Rows written without _CHANGE_TYPE to a
// keyed table are appended as they come, duplicates included (BigQuery
// does not enforce keys); the next winning change of their key replaces or
// removes all of them. KeyStates lists the winning change per key. Changing
// the primary key starts the per-key memory afresh. Bench mode neither
// decodes nor checks CDC rows: it counts them.
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
// SetRowRate(n) caps the rows acknowledged per second at n over all
// connections: each request waits for its share (rows/n seconds) of one
// shared timeline before it is processed and answered, so a writer faster
// than n meets backpressure; bench mode counts rows as they are answered.
// StallReads(true) stops reading AppendRows requests on every connection
// (one a connection is already waiting for is still taken), while requests
// read are answered as usual; HTTP/2 flow control then blocks a client's
// Send once its requests overflow the stream's window (gRPC-Go's is 64 KiB
// at first and at most 16 MiB). StallReads(false) resumes reading.
// AppendsReceived counts the requests read so far, so a test knows a
// request is in the server's hands before it stalls reads.
// SetConnectionRate(n) caps each connection at n rows acknowledged per
// second on a timeline of its own, as BigQuery bounds a connection's
// throughput: unlike SetRowRate, more connections take more rows.
// FailTable(project, dataset, table, code) fails every append to one
// table's default stream as FailAppends would (a transport code ends the
// connection, the others are answered), until called with codes.OK, while
// the other tables on the same connection are served.
// Connections reports the AppendRows connections open and the most open
// at once (what BigQuery's concurrent connections quota counts);
// WriterSchemas the requests that carried a writer_schema;
// RequestsWithoutStream those that named no write_stream (goccy's emulator
// sends those to whichever stream it knows first).
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
// Not modelled: DML, SQL queries and jobs (so neither partition pruning nor the
// requirePartitionFilter check of queries), tabledata.insertAll, partition
// decorators, the Storage Read API, Arrow rows, missing-value
// interpretations and default values, integer-range partitioning rules,
// quotas other than the 10 MB request limit.
package bqfake
