// Package schema turns Confluent-framed Avro records into BigQuery rows.
//
// It fetches writer schemas from a Confluent-compatible Schema Registry
// (resolving schema references), maps each one to the BigQuery columns it
// needs (see the mapping table in the repository README) and compiles, per
// writer schema and table, a Transcoder that turns record bodies straight
// into the protobuf bytes of their rows, in the wire format of package bq.
// It describes columns and produces row bytes; it never talks to BigQuery.
//
// For tables written as changes (BigQuery CDC), a ChangeTranscoder does the
// same for Debezium change events (or values that are rows, deletes marked
// by Debezium's unwrap transform) and says what each record changes: an
// upsert, a delete or a truncate, and the leading sections of its sequence
// (ChangeSpec). Kafka Connect and Debezium types (a connect.name on the
// Avro type) map as the README's table says.
//
// Its tests hold the transcoders to a reference: a decoder of bodies into
// the row value contract (decode_oracle_test.go; change_oracle_test.go for
// changes), whose rows bq's encoder writes. The reference is test code
// only.
package schema
