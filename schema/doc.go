// Package schema turns Confluent-framed Avro records into BigQuery rows.
//
// It fetches writer schemas from a Confluent-compatible Schema Registry
// (resolving schema references), maps each one to the BigQuery columns it
// needs (see the mapping table in the repository README) and decodes record
// bodies into rows that follow the row value contract shared with package bq.
// It describes columns and produces values; it never talks to BigQuery.
package schema
