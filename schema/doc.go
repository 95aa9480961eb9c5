// Package schema turns Confluent-framed Avro records into BigQuery rows.
//
// It fetches writer schemas from a Confluent-compatible Schema Registry
// (resolving schema references), maps each one to the BigQuery columns it
// needs (see the mapping table in the repository README) and compiles, per
// writer schema and table, a Transcoder that turns record bodies straight
// into the protobuf bytes of their rows, in the wire format of package bq.
// It describes columns and produces row bytes; it never talks to BigQuery.
//
// Its tests hold the transcoder to a reference: a decoder of bodies into
// the row value contract (decode_oracle_test.go), whose rows bq's encoder
// writes. The reference is test code only.
package schema
