package schema

import (
	"math"
	"math/big"
	"sort"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"github.com/hamba/avro/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	STRING     = bigquery.StringFieldType
	BYTES      = bigquery.BytesFieldType
	INTEGER    = bigquery.IntegerFieldType
	FLOAT      = bigquery.FloatFieldType
	BOOLEAN    = bigquery.BooleanFieldType
	TIMESTAMP  = bigquery.TimestampFieldType
	RECORD     = bigquery.RecordFieldType
	DATE       = bigquery.DateFieldType
	TIME       = bigquery.TimeFieldType
	DATETIME   = bigquery.DateTimeFieldType
	NUMERIC    = bigquery.NumericFieldType
	BIGNUMERIC = bigquery.BigNumericFieldType
	JSON       = bigquery.JSONFieldType
)

func stockV1Columns() bigquery.Schema {
	return bigquery.Schema{
		col("timestamp", INTEGER, "REQUIRED"),
		col("process_reference", STRING, "NULLABLE"),
		col("variant_id", INTEGER, "REQUIRED"),
		col("warehouse_id", INTEGER, "REQUIRED"),
		col("warehouse_name", STRING, "REQUIRED"),
		col("huubclient_id", INTEGER, "REQUIRED"),
		col("ean", STRING, "REQUIRED"),
		col("reference", STRING, "REQUIRED"),
		col("sales_channel_type", STRING, "REQUIRED"),
		col("delta", INTEGER, "REQUIRED"),
		col("stock_after_adjust", INTEGER, "REQUIRED"),
	}
}

func stockV2Columns() bigquery.Schema {
	return append(stockV1Columns(),
		col("adjusted_at", TIMESTAMP, "NULLABLE"),
		col("unit_cost", NUMERIC, "NULLABLE"),
		col("reason", STRING, "REQUIRED"),
	)
}

func addressColumns() []*bigquery.FieldSchema {
	return []*bigquery.FieldSchema{
		col("line1", STRING, "REQUIRED"),
		col("line2", STRING, "NULLABLE"),
		col("city", STRING, "REQUIRED"),
		col("postal_code", STRING, "REQUIRED"),
		col("country_code", BYTES, "REQUIRED"),
	}
}

func warehouseColumns() []*bigquery.FieldSchema {
	return []*bigquery.FieldSchema{
		col("id", INTEGER, "REQUIRED"),
		col("name", STRING, "REQUIRED"),
		col("address", RECORD, "REQUIRED", addressColumns()...),
	}
}

func deliveryColumns() bigquery.Schema {
	return bigquery.Schema{
		col("delivery_id", STRING, "REQUIRED"),
		col("created_at", TIMESTAMP, "REQUIRED"),
		col("delivery_date", DATE, "REQUIRED"),
		col("slot_start", TIME, "NULLABLE"),
		col("origin", RECORD, "REQUIRED", warehouseColumns()...),
		col("destination", RECORD, "REQUIRED", addressColumns()...),
		col("status", STRING, "REQUIRED"),
		col("total", NUMERIC, "REQUIRED"),
		col("lines", RECORD, "REPEATED",
			col("ean", STRING, "REQUIRED"),
			col("quantity", INTEGER, "REQUIRED"),
			col("weight_kg", FLOAT, "NULLABLE"),
		),
		col("attributes", RECORD, "REPEATED",
			col("key", STRING, "REQUIRED"),
			col("value", STRING, "REQUIRED"),
		),
		col("tracking", RECORD, "NULLABLE",
			col("string", STRING, "NULLABLE"),
			col("long", INTEGER, "NULLABLE"),
		),
		col("signature_png", BYTES, "NULLABLE"),
	}
}

func allTypesColumns() bigquery.Schema {
	inner := func(mode string) *bigquery.FieldSchema {
		return doc(col("Inner", RECORD, mode,
			col("x", INTEGER, "REQUIRED"),
			col("deeper", RECORD, "REQUIRED", col("y", STRING, "REQUIRED")),
		), "an inner record")
	}
	rec := inner("REQUIRED")
	rec.Name = "rec"
	return bigquery.Schema{
		doc(col("b", BOOLEAN, "REQUIRED"), "a boolean"),
		col("i", INTEGER, "REQUIRED"),
		col("l", INTEGER, "REQUIRED"),
		col("f", FLOAT, "REQUIRED"),
		col("d", FLOAT, "REQUIRED"),
		col("d_nan", FLOAT, "REQUIRED"),
		col("d_inf", FLOAT, "REQUIRED"),
		col("by", BYTES, "REQUIRED"),
		col("s", STRING, "REQUIRED"),
		rec,
		doc(col("e", STRING, "REQUIRED"), "a color"),
		col("arr", STRING, "REPEATED"),
		col("arr_rec", RECORD, "REPEATED", col("y", STRING, "REQUIRED")),
		col("arr_arr", RECORD, "REPEATED", col("items", INTEGER, "REPEATED")),
		col("m", RECORD, "REPEATED", col("key", STRING, "REQUIRED"), col("value", INTEGER, "REQUIRED")),
		col("m_opt", RECORD, "REPEATED", col("key", STRING, "REQUIRED"), col("value", STRING, "NULLABLE")),
		col("fx", BYTES, "REQUIRED"),
		col("opt", STRING, "NULLABLE"),
		col("opt_null", STRING, "NULLABLE"),
		col("opt_last", STRING, "NULLABLE"),
		col("multi", RECORD, "NULLABLE",
			col("string", STRING, "NULLABLE"),
			col("long", INTEGER, "NULLABLE"),
			inner("NULLABLE"),
		),
		col("multi_req", RECORD, "REQUIRED",
			col("string", STRING, "NULLABLE"),
			col("long", INTEGER, "NULLABLE"),
		),
		col("opt_arr", INTEGER, "REPEATED"),
		col("opt_map", RECORD, "REPEATED", col("key", STRING, "REQUIRED"), col("value", INTEGER, "REQUIRED")),
		col("dec_bytes", NUMERIC, "REQUIRED"),
		col("dec_fixed", NUMERIC, "REQUIRED"),
		col("dec_big", BIGNUMERIC, "REQUIRED"),
		col("dec_str", STRING, "REQUIRED"),
		col("date", DATE, "REQUIRED"),
		col("t_ms", TIME, "REQUIRED"),
		col("t_us", TIME, "REQUIRED"),
		col("ts_ms", TIMESTAMP, "REQUIRED"),
		col("ts_us", TIMESTAMP, "REQUIRED"),
		col("ts_ns", INTEGER, "REQUIRED"),
		col("lts_ms", DATETIME, "REQUIRED"),
		col("lts_us", DATETIME, "REQUIRED"),
		col("id", STRING, "REQUIRED"),
		col("dur", BYTES, "REQUIRED"),
		col("unknown_lt", STRING, "REQUIRED"),
		col("with_default", INTEGER, "REQUIRED"),
	}
}

type golden struct {
	name    string
	files   []string // referenced schemas first, the writer schema last
	columns bigquery.Schema
	record  map[string]any // encoded with hamba/avro
	row     map[string]any // what Decode must return
}

func goldens() []golden {
	addressRecord := func(line2 any) map[string]any {
		return map[string]any{"line1": "Rua A 1", "line2": line2, "city": "Porto", "postal_code": "4000-001", "country_code": [2]byte{'P', 'T'}}
	}
	addressRow := func(line2 any) map[string]any {
		row := map[string]any{"line1": "Rua A 1", "city": "Porto", "postal_code": "4000-001", "country_code": []byte("PT")}
		if line2 != nil {
			row["line2"] = line2
		}
		return row
	}
	stockRecord := func() map[string]any {
		return map[string]any{
			"timestamp": int64(1700000000000), "process_reference": "PR-1", "variant_id": 11,
			"warehouse_id": 2, "warehouse_name": "Porto", "huubclient_id": 7, "ean": "5601234567890",
			"reference": "REF-9", "sales_channel_type": "B2C", "delta": -3, "stock_after_adjust": 40,
		}
	}
	stockRow := func() map[string]any {
		return map[string]any{
			"timestamp": int64(1700000000000), "process_reference": "PR-1", "variant_id": int64(11),
			"warehouse_id": int64(2), "warehouse_name": "Porto", "huubclient_id": int64(7), "ean": "5601234567890",
			"reference": "REF-9", "sales_channel_type": "B2C", "delta": int64(-3), "stock_after_adjust": int64(40),
		}
	}
	v2Record := stockRecord()
	v2Record["process_reference"] = nil
	v2Record["adjusted_at"] = time.UnixMilli(1700000000123).UTC()
	v2Record["unit_cost"] = big.NewRat(-1234500, 10000)
	v2Record["reason"] = "DAMAGE"
	v2Row := stockRow()
	delete(v2Row, "process_reference")
	v2Row["adjusted_at"] = int64(1700000000123000)
	v2Row["unit_cost"] = "-123.4500"
	v2Row["reason"] = "DAMAGE"

	return append([]golden{
		{
			name: "stock v1", files: []string{"sms_physical_stock_updates.v1.avsc"},
			columns: stockV1Columns(), record: stockRecord(), row: stockRow(),
		},
		{
			name: "stock v2", files: []string{"sms_physical_stock_updates.v2.avsc"},
			columns: stockV2Columns(), record: v2Record, row: v2Row,
		},
		{
			name: "address", files: []string{"com.huub.types.Address.avsc"},
			columns: addressColumns(), record: addressRecord(nil), row: addressRow(nil),
		},
		{
			name: "warehouse", files: []string{"com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc"},
			columns: warehouseColumns(),
			record:  map[string]any{"id": 3, "name": "Main", "address": addressRecord("2º esq")},
			row:     map[string]any{"id": int64(3), "name": "Main", "address": addressRow("2º esq")},
		},
		{
			name:    "delivery",
			files:   []string{"com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc", "delivery_created.avsc"},
			columns: deliveryColumns(),
			record: map[string]any{
				"delivery_id":   "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"created_at":    time.UnixMicro(1700000000123456).UTC(),
				"delivery_date": time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
				"slot_start":    map[string]any{"int.time-millis": 9*time.Hour + 30*time.Minute},
				"origin":        map[string]any{"id": 1, "name": "North", "address": addressRecord(nil)},
				"destination":   addressRecord("apt 4"),
				"status":        "SHIPPED",
				"total":         big.NewRat(123456, 100),
				"lines": []any{
					map[string]any{"ean": "A", "quantity": 2, "weight_kg": 1.25},
					map[string]any{"ean": "B", "quantity": 1, "weight_kg": nil},
				},
				"attributes":    map[string]any{"gift": "yes", "channel": "web"},
				"tracking":      map[string]any{"long": int64(123456789012)},
				"signature_png": []byte{0x89, 'P', 'N', 'G'},
			},
			row: map[string]any{
				"delivery_id":   "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"created_at":    int64(1700000000123456),
				"delivery_date": int32(19782),
				"slot_start":    "09:30:00.000000",
				"origin":        map[string]any{"id": int64(1), "name": "North", "address": addressRow(nil)},
				"destination":   addressRow("apt 4"),
				"status":        "SHIPPED",
				"total":         "1234.56",
				"lines": []any{
					map[string]any{"ean": "A", "quantity": int64(2), "weight_kg": 1.25},
					map[string]any{"ean": "B", "quantity": int64(1)},
				},
				"attributes": []any{
					map[string]any{"key": "channel", "value": "web"},
					map[string]any{"key": "gift", "value": "yes"},
				},
				"tracking":      map[string]any{"long": int64(123456789012)},
				"signature_png": []byte{0x89, 'P', 'N', 'G'},
			},
		},
		{
			name: "all types", files: []string{"all_types.avsc"},
			columns: allTypesColumns(),
			record: map[string]any{
				"b": true, "i": int32(-5), "l": int64(1) << 40, "f": float32(1.5), "d": 2.25,
				"d_nan": math.NaN(), "d_inf": math.Inf(-1),
				"by": []byte{1, 2}, "s": "héllo",
				"rec":        map[string]any{"x": 1, "deeper": map[string]any{"y": "z"}},
				"e":          "GREEN",
				"arr":        []any{"a", "b"},
				"arr_rec":    []any{map[string]any{"y": "q"}},
				"arr_arr":    []any{[]any{1, 2}, []any{}},
				"m":          map[string]any{"k": int64(3)},
				"m_opt":      map[string]any{"n": nil},
				"fx":         [4]byte{9, 8, 7, 6},
				"opt":        "o",
				"opt_null":   nil,
				"opt_last":   "last",
				"multi":      map[string]any{"com.example.Inner": map[string]any{"x": 2, "deeper": map[string]any{"y": "w"}}},
				"multi_req":  map[string]any{"long": int64(42)},
				"opt_arr":    nil,
				"opt_map":    map[string]any{"map": map[string]any{"a": 1}},
				"dec_bytes":  big.NewRat(-1234500, 10000),
				"dec_fixed":  big.NewRat(1, 1000000000),
				"dec_big":    new(big.Rat).SetFrac(new(big.Int).Exp(big.NewInt(10), big.NewInt(29), nil), big.NewInt(1)),
				"dec_str":    big.NewRat(-1, 100),
				"date":       time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC),
				"t_ms":       13*time.Hour + 4*time.Minute + 5*time.Second + 6*time.Millisecond,
				"t_us":       23*time.Hour + 59*time.Minute + 59*time.Second + 999999*time.Microsecond,
				"ts_ms":      time.UnixMilli(-1).UTC(),
				"ts_us":      time.UnixMicro(1700000000123456).UTC(),
				"ts_ns":      int64(1700000000123456789),
				"lts_ms":     time.UnixMilli(1700000000123).UTC(),
				"lts_us":     time.UnixMicro(1700000000123456).UTC(),
				"id":         "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"dur":        avro.LogicalDuration{Months: 1, Days: 2, Milliseconds: 3},
				"unknown_lt": `{"a":1}`, "with_default": 7,
			},
			row: map[string]any{
				"b": true, "i": int64(-5), "l": int64(1) << 40, "f": 1.5, "d": 2.25,
				"d_nan": math.NaN(), "d_inf": math.Inf(-1),
				"by": []byte{1, 2}, "s": "héllo",
				"rec":        map[string]any{"x": int64(1), "deeper": map[string]any{"y": "z"}},
				"e":          "GREEN",
				"arr":        []any{"a", "b"},
				"arr_rec":    []any{map[string]any{"y": "q"}},
				"arr_arr":    []any{map[string]any{"items": []any{int64(1), int64(2)}}, map[string]any{"items": []any{}}},
				"m":          []any{map[string]any{"key": "k", "value": int64(3)}},
				"m_opt":      []any{map[string]any{"key": "n"}},
				"fx":         []byte{9, 8, 7, 6},
				"opt":        "o",
				"opt_last":   "last",
				"multi":      map[string]any{"Inner": map[string]any{"x": int64(2), "deeper": map[string]any{"y": "w"}}},
				"multi_req":  map[string]any{"long": int64(42)},
				"opt_arr":    []any{},
				"opt_map":    []any{map[string]any{"key": "a", "value": int64(1)}},
				"dec_bytes":  "-123.4500",
				"dec_fixed":  "0.000000001",
				"dec_big":    "100000000000000000000000000000.0000000000",
				"dec_str":    "-0.01",
				"date":       int32(-1),
				"t_ms":       "13:04:05.006000",
				"t_us":       "23:59:59.999999",
				"ts_ms":      int64(-1000),
				"ts_us":      int64(1700000000123456),
				"ts_ns":      int64(1700000000123456789),
				"lts_ms":     "2023-11-14 22:13:20.123000",
				"lts_us":     "2023-11-14 22:13:20.123456",
				"id":         "2f1c7e2a-8a4b-4c1e-9b7f-0d8e5a6b7c8d",
				"dur":        []byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0},
				"unknown_lt": `{"a":1}`, "with_default": int64(7),
			},
		},
	}, debeziumGoldens()...)
}

func TestGolden(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			parsed := parseFiles(t, g.files...)
			s := compileFiles(t, g.files...)
			assertColumns(t, s.Columns(), g.columns)

			row, err := s.Decode(encode(t, parsed, g.record))
			if err != nil {
				t.Fatal(err)
			}
			sortMapEntries(row, "attributes")
			assertRow(t, row, g.row)
		})
	}
}

// sortMapEntries orders a decoded Avro map column by key: hamba/avro writes
// Go maps in random order, and Decode keeps the written order.
func sortMapEntries(row map[string]any, column string) {
	entries, ok := row[column].([]any)
	if !ok {
		return
	}
	sort.Slice(entries, func(i, j int) bool {
		return entries[i].(map[string]any)["key"].(string) < entries[j].(map[string]any)["key"].(string)
	})
}

// TestColumnsIsACopy: a caller changing Columns' result must not change the
// schema every other goroutine sees.
func TestColumnsIsACopy(t *testing.T) {
	s := compileFiles(t, "com.huub.types.Address.avsc", "com.huub.types.Warehouse.avsc")
	c := s.Columns()
	c[2].Schema[0].Name = "changed"
	c[0].Type = STRING
	assertColumns(t, s.Columns(), warehouseColumns())
}

// TestEvolution: v2 of the stock topic only adds optional fields, so its
// columns are v1's plus new ones, identical where they overlap: the table
// made for either version takes records of both.
func TestEvolution(t *testing.T) {
	v1 := compileFiles(t, "sms_physical_stock_updates.v1.avsc").Columns()
	v2 := compileFiles(t, "sms_physical_stock_updates.v2.avsc").Columns()

	union := append(bigquery.Schema{}, v2...)
	byName := make(map[string]*bigquery.FieldSchema)
	for _, c := range v2 {
		byName[c.Name] = c
	}
	for _, c := range v1 {
		got, ok := byName[c.Name]
		if !ok {
			union = append(union, c)
			continue
		}
		assertColumns(t, bigquery.Schema{got}, bigquery.Schema{c})
	}
	assertColumns(t, union, v2)
}

// TestWideDecimalWarnsOnce: a decimal too wide for BIGNUMERIC becomes a
// STRING column, and the operator hears about it once per schema, not per
// transcoder or record.
func TestWideDecimalWarnsOnce(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	s, err := compile(1, parseFiles(t, "all_types.avsc"), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	for _, x := range goldens() {
		if x.name == "all types" {
			g = x
		}
	}
	body := encode(t, parseFiles(t, "all_types.avsc"), g.record)
	for range 3 {
		tc, err := s.Transcoder(s.Columns(), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Append(nil, body, nil); err != nil {
			t.Fatal(err)
		}
	}
	entries := logs.All()
	if len(entries) != 1 || entries[0].ContextMap()["field"] != "dec_str" {
		t.Fatalf("warnings = %v, want one about dec_str", entries)
	}
}
