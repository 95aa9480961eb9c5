package schema

import (
	"math/big"
	"time"

	"cloud.google.com/go/bigquery"
)

// Golden cases of Debezium-shaped schemas (testdata/debezium), as
// Debezium's connectors register them through Confluent's Avro converter:
// the products table of the PostgreSQL and MySQL tutorials (key, change
// event envelope, and the value ExtractNewRecordState makes of it), and a
// table with a column of each Kafka Connect and Debezium type.

func productColumns() []*bigquery.FieldSchema {
	return []*bigquery.FieldSchema{
		col("id", INTEGER, "REQUIRED"),
		col("name", STRING, "REQUIRED"),
		col("description", STRING, "NULLABLE"),
		col("weight", FLOAT, "NULLABLE"),
		col("price", NUMERIC, "REQUIRED"),
		col("created_at", DATETIME, "REQUIRED"),
		col("updated", TIMESTAMP, "NULLABLE"),
	}
}

func debeziumSourceColumns(mysql bool) []*bigquery.FieldSchema {
	cols := []*bigquery.FieldSchema{
		col("version", STRING, "REQUIRED"),
		col("connector", STRING, "REQUIRED"),
		col("name", STRING, "REQUIRED"),
		col("ts_ms", INTEGER, "REQUIRED"),
		col("snapshot", STRING, "NULLABLE"),
		col("db", STRING, "REQUIRED"),
		col("sequence", STRING, "NULLABLE"),
		col("ts_us", INTEGER, "NULLABLE"),
		col("ts_ns", INTEGER, "NULLABLE"),
	}
	if mysql {
		return append(cols,
			col("table", STRING, "NULLABLE"),
			col("server_id", INTEGER, "REQUIRED"),
			col("gtid", STRING, "NULLABLE"),
			col("file", STRING, "REQUIRED"),
			col("pos", INTEGER, "REQUIRED"),
			col("row", INTEGER, "REQUIRED"),
			col("thread", INTEGER, "NULLABLE"),
			col("query", STRING, "NULLABLE"),
		)
	}
	return append(cols,
		col("schema", STRING, "REQUIRED"),
		col("table", STRING, "REQUIRED"),
		col("txId", INTEGER, "NULLABLE"),
		col("lsn", INTEGER, "NULLABLE"),
		col("xmin", INTEGER, "NULLABLE"),
	)
}

func debeziumEnvelopeColumns(mysql bool) bigquery.Schema {
	return bigquery.Schema{
		col("before", RECORD, "NULLABLE", productColumns()...),
		col("after", RECORD, "NULLABLE", productColumns()...),
		col("source", RECORD, "REQUIRED", debeziumSourceColumns(mysql)...),
		col("transaction", RECORD, "NULLABLE",
			col("id", STRING, "REQUIRED"),
			col("total_order", INTEGER, "REQUIRED"),
			col("data_collection_order", INTEGER, "REQUIRED"),
		),
		col("op", STRING, "REQUIRED"),
		col("ts_ms", INTEGER, "NULLABLE"),
		col("ts_us", INTEGER, "NULLABLE"),
		col("ts_ns", INTEGER, "NULLABLE"),
	}
}

func debeziumTypesColumns() bigquery.Schema {
	return bigquery.Schema{
		col("d_date", DATE, "REQUIRED"),
		col("t_ms", TIME, "REQUIRED"),
		col("t_us", TIME, "REQUIRED"),
		col("t_ns", TIME, "REQUIRED"),
		col("ts_ms", DATETIME, "REQUIRED"),
		col("ts_us", DATETIME, "REQUIRED"),
		col("ts_ns", DATETIME, "REQUIRED"),
		col("tstz", TIMESTAMP, "REQUIRED"),
		col("timetz", STRING, "REQUIRED"),
		col("num", BIGNUMERIC, "REQUIRED"),
		col("num_opt", BIGNUMERIC, "NULLABLE"),
		col("js", JSON, "REQUIRED"),
		col("jsb_opt", JSON, "NULLABLE"),
		col("uid", STRING, "REQUIRED"),
		col("mood", STRING, "REQUIRED"),
		col("moods", STRING, "REQUIRED"),
		col("flags", BYTES, "REQUIRED"),
		col("dec", NUMERIC, "REQUIRED"),
		col("dec_nolt", NUMERIC, "REQUIRED"),
		col("dec_noprec", BIGNUMERIC, "REQUIRED"),
		col("k_date", DATE, "REQUIRED"),
		col("k_time", TIME, "REQUIRED"),
		col("k_ts", TIMESTAMP, "REQUIRED"),
		col("k_date_nolt", DATE, "REQUIRED"),
		col("k_ts_nolt", TIMESTAMP, "REQUIRED"),
		col("opt_tstz", TIMESTAMP, "NULLABLE"),
		col("opt_ts_us", DATETIME, "NULLABLE"),
		col("dates", DATE, "REPEATED"),
		col("tstzs", TIMESTAMP, "REPEATED"),
		col("yr", INTEGER, "REQUIRED"),
		col("dur", INTEGER, "REQUIRED"),
	}
}

// Debezium fixture files, relative to testdata.
const (
	pgKeyFile       = "debezium/dbserver1.inventory.products-key.avsc"
	pgEnvelopeFile  = "debezium/dbserver1.inventory.products-value.avsc"
	myKeyFile       = "debezium/mysqlserver1.inventory.products-key.avsc"
	myEnvelopeFile  = "debezium/mysqlserver1.inventory.products-value.avsc"
	unwrapValueFile = "debezium/unwrap.dbserver1.inventory.products-value.avsc"
	dbzTypesFile    = "debezium/dbserver1.public.all_types-value.avsc"
)

// productRecord is a products row as hamba/avro encodes it, and the row
// Decode makes of it.
func productRecord(id int, updated any) (map[string]any, map[string]any) {
	record := map[string]any{
		"id": id, "name": "car battery", "description": "12V car battery", "weight": 8.1,
		"price": big.NewRat(8999, 100), "created_at": int64(1709204096789012), "updated": updated,
	}
	row := map[string]any{
		"id": int64(id), "name": "car battery", "description": "12V car battery", "weight": 8.1,
		"price": "89.99", "created_at": "2024-02-29 10:54:56.789012",
	}
	if updated != nil {
		row["updated"] = int64(1709288130123456) // 2024-03-01T10:15:30.123456Z
	}
	return record, row
}

func debeziumGoldens() []golden {
	before, beforeRow := productRecord(107, nil)
	after, afterRow := productRecord(107, "2024-03-01T12:15:30.123456+02:00")
	pgSource := map[string]any{
		"version": "2.7.3.Final", "connector": "postgresql", "name": "dbserver1", "ts_ms": int64(1709288130123),
		"snapshot": "false", "db": "postgres", "sequence": `["24023119","24023448"]`,
		"ts_us": int64(1709288130123456), "ts_ns": int64(1709288130123456000),
		"schema": "inventory", "table": "products", "txId": int64(556), "lsn": int64(24023448), "xmin": nil,
	}
	pgSourceRow := map[string]any{
		"version": "2.7.3.Final", "connector": "postgresql", "name": "dbserver1", "ts_ms": int64(1709288130123),
		"snapshot": "false", "db": "postgres", "sequence": `["24023119","24023448"]`,
		"ts_us": int64(1709288130123456), "ts_ns": int64(1709288130123456000),
		"schema": "inventory", "table": "products", "txId": int64(556), "lsn": int64(24023448),
	}
	mySource := map[string]any{
		"version": "2.7.3.Final", "connector": "mysql", "name": "mysqlserver1", "ts_ms": int64(1709288130000),
		"snapshot": "false", "db": "inventory", "sequence": nil, "ts_us": int64(1709288130000000), "ts_ns": int64(1709288130000000000),
		"table": "products", "server_id": int64(223344), "gtid": nil, "file": "mysql-bin.000003", "pos": int64(805),
		"row": 0, "thread": int64(7), "query": nil,
	}
	mySourceRow := map[string]any{
		"version": "2.7.3.Final", "connector": "mysql", "name": "mysqlserver1", "ts_ms": int64(1709288130000),
		"snapshot": "false", "db": "inventory", "ts_us": int64(1709288130000000), "ts_ns": int64(1709288130000000000),
		"table": "products", "server_id": int64(223344), "file": "mysql-bin.000003", "pos": int64(805),
		"row": int64(0), "thread": int64(7),
	}
	unwrap, unwrapRow := productRecord(107, "2024-03-01T10:15:30.123456Z")
	unwrap["__op"], unwrap["__source_ts_ms"], unwrap["__lsn"], unwrap["__deleted"] = "u", int64(1709288130123), int64(24023448), "false"
	unwrapRow["__op"], unwrapRow["__source_ts_ms"], unwrapRow["__lsn"], unwrapRow["__deleted"] = "u", int64(1709288130123), int64(24023448), "false"

	flags := []byte{0x05}
	return []golden{
		{
			name: "debezium postgres key", files: []string{pgKeyFile},
			columns: bigquery.Schema{col("id", INTEGER, "REQUIRED")},
			record:  map[string]any{"id": 107}, row: map[string]any{"id": int64(107)},
		},
		{
			name: "debezium postgres envelope", files: []string{pgEnvelopeFile},
			columns: debeziumEnvelopeColumns(false),
			record: map[string]any{
				"before": pgValue(before), "after": pgValue(after), "source": pgSource, "transaction": nil,
				"op": "u", "ts_ms": int64(1709288130456), "ts_us": nil, "ts_ns": nil,
			},
			row: map[string]any{
				"before": beforeRow, "after": afterRow, "source": pgSourceRow,
				"op": "u", "ts_ms": int64(1709288130456),
			},
		},
		{
			name: "debezium mysql envelope", files: []string{myEnvelopeFile},
			columns: debeziumEnvelopeColumns(true),
			record: map[string]any{
				"before": nil, "after": map[string]any{"mysqlserver1.inventory.products.Value": after}, "source": mySource,
				"transaction": map[string]any{"event.block": map[string]any{"id": "file=mysql-bin.000003,pos=805", "total_order": int64(1), "data_collection_order": int64(1)}},
				"op":          "c", "ts_ms": int64(1709288130456), "ts_us": nil, "ts_ns": nil,
			},
			row: map[string]any{
				"after": afterRow, "source": mySourceRow,
				"transaction": map[string]any{"id": "file=mysql-bin.000003,pos=805", "total_order": int64(1), "data_collection_order": int64(1)},
				"op":          "c", "ts_ms": int64(1709288130456),
			},
		},
		{
			name: "debezium unwrapped value", files: []string{unwrapValueFile},
			columns: append(bigquery.Schema(productColumns()),
				col("__op", STRING, "NULLABLE"),
				col("__source_ts_ms", INTEGER, "NULLABLE"),
				col("__lsn", INTEGER, "NULLABLE"),
				col("__deleted", STRING, "NULLABLE"),
			),
			record: unwrap, row: unwrapRow,
		},
		{
			name: "debezium types", files: []string{dbzTypesFile},
			columns: debeziumTypesColumns(),
			record: map[string]any{
				"d_date": 19782, "t_ms": 45296789, "t_us": int64(45296789012), "t_ns": int64(45296789012345),
				"ts_ms": int64(1709204096789), "ts_us": int64(1709204096789012), "ts_ns": int64(-1),
				"tstz":    "2024-03-01T10:15:30.123456789+02:00",
				"timetz":  "10:15:30.123456Z",
				"num":     map[string]any{"scale": 5, "value": twos(big.NewInt(-1234567890))},
				"num_opt": map[string]any{"io.debezium.data.VariableScaleDecimal": map[string]any{"scale": -2, "value": []byte{15}}},
				"js":      `{"a":[1,2,{"b":null}]}`, "jsb_opt": nil,
				"uid":  "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"mood": "happy", "moods": "a,c", "flags": flags,
				"dec":         big.NewRat(-1234567, 1000),
				"dec_nolt":    []byte{0x1c, 0xbe, 0x99, 0x1a, 0x14}, // 123456789012
				"dec_noprec":  twos(new(big.Int).Add(new(big.Int).Exp(big.NewInt(10), big.NewInt(34), nil), big.NewInt(1))),
				"k_date":      time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
				"k_time":      12*time.Hour + 34*time.Minute + 56*time.Second + 789*time.Millisecond,
				"k_ts":        time.UnixMilli(1709204096789).UTC(),
				"k_date_nolt": -719162,
				"k_ts_nolt":   int64(-1),
				"opt_tstz":    "2024-03-01T10:15:30Z", "opt_ts_us": nil,
				"dates": []any{19782, 0},
				"tstzs": []any{"2024-03-01T10:15Z", "1970-01-01T00:00:00.5-00:30"},
				"yr":    2024, "dur": int64(3600000000),
			},
			row: map[string]any{
				"d_date": int32(19782), "t_ms": "12:34:56.789000", "t_us": "12:34:56.789012", "t_ns": "12:34:56.789012",
				"ts_ms": "2024-02-29 10:54:56.789000", "ts_us": "2024-02-29 10:54:56.789012", "ts_ns": "1969-12-31 23:59:59.999999",
				"tstz":   int64(1709280930123456),
				"timetz": "10:15:30.123456Z",
				"num":    "-12345.67890", "num_opt": "1500",
				"js":   `{"a":[1,2,{"b":null}]}`,
				"uid":  "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"mood": "happy", "moods": "a,c", "flags": flags,
				"dec":         "-1234.567",
				"dec_nolt":    "123456789.012",
				"dec_noprec":  "1000000000000000000000000000000.0001",
				"k_date":      int32(19782),
				"k_time":      "12:34:56.789000",
				"k_ts":        int64(1709204096789000),
				"k_date_nolt": int32(-719162),
				"k_ts_nolt":   int64(-1000),
				"opt_tstz":    int64(1709288130000000),
				"dates":       []any{int32(19782), int32(0)},
				"tstzs":       []any{int64(1709288100000000), int64(1800500000)},
				"yr":          int64(2024), "dur": int64(3600000000),
			},
		},
	}
}

// pgValue wraps a products record as hamba/avro takes a union branch.
func pgValue(v map[string]any) map[string]any {
	return map[string]any{"dbserver1.inventory.products.Value": v}
}

// twos is v's minimal big-endian two's complement, as Avro decimals and
// VariableScaleDecimal's value hold it.
func twos(v *big.Int) []byte {
	n := (v.BitLen() + 8) / 8
	x := new(big.Int).Set(v)
	if v.Sign() < 0 {
		x.Add(x, new(big.Int).Lsh(big.NewInt(1), uint(8*n)))
	}
	return x.FillBytes(make([]byte, n))
}
