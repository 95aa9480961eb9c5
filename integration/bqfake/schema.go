package bqfake

//lint:file-ignore ST1005 bqfake returns BigQuery's own error messages verbatim (capitalised, some ending in a period), as clients see them from BigQuery.

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	bq "google.golang.org/api/bigquery/v2"
)

// Column types as BigQuery reports them (legacy SQL names).
const (
	typeBoolean    = "BOOLEAN"
	typeInteger    = "INTEGER"
	typeFloat      = "FLOAT"
	typeString     = "STRING"
	typeBytes      = "BYTES"
	typeNumeric    = "NUMERIC"
	typeBigNumeric = "BIGNUMERIC"
	typeDate       = "DATE"
	typeTime       = "TIME"
	typeDatetime   = "DATETIME"
	typeTimestamp  = "TIMESTAMP"
	typeRecord     = "RECORD"
	typeGeography  = "GEOGRAPHY"
	typeJSON       = "JSON"

	modeNullable = "NULLABLE"
	modeRequired = "REQUIRED"
	modeRepeated = "REPEATED"
)

// canonicalType maps every accepted spelling of a column type to the name
// BigQuery reports back.
func canonicalType(t string) (string, bool) {
	switch strings.ToUpper(t) {
	case "BOOLEAN", "BOOL":
		return typeBoolean, true
	case "INTEGER", "INT64":
		return typeInteger, true
	case "FLOAT", "FLOAT64":
		return typeFloat, true
	case "NUMERIC", "DECIMAL":
		return typeNumeric, true
	case "BIGNUMERIC", "BIGDECIMAL":
		return typeBigNumeric, true
	case "RECORD", "STRUCT":
		return typeRecord, true
	case typeString, typeBytes, typeDate, typeTime, typeDatetime, typeTimestamp, typeGeography, typeJSON:
		return strings.ToUpper(t), true
	}
	return "", false
}

// normalizeSchema validates a schema from tables.insert/patch and returns a
// copy with canonical type names and explicit modes, as BigQuery returns it.
func normalizeSchema(fields []*bq.TableFieldSchema, prefix string) ([]*bq.TableFieldSchema, error) {
	seen := make(map[string]bool, len(fields))
	out := make([]*bq.TableFieldSchema, 0, len(fields))
	for _, f := range fields {
		if f == nil {
			return nil, fmt.Errorf("field in %q is null", prefix)
		}
		path := prefix + f.Name
		if f.Name == "" || len(f.Name) > 300 || !utf8.ValidString(f.Name) {
			return nil, fmt.Errorf("invalid field name %q", path)
		}
		lower := strings.ToLower(f.Name)
		if seen[lower] {
			return nil, fmt.Errorf("duplicate field name %q", path)
		}
		seen[lower] = true

		c := *f
		c.ForceSendFields, c.NullFields = nil, nil
		typ, ok := canonicalType(f.Type)
		if !ok {
			return nil, fmt.Errorf("field %s has type %q, which bqfake does not support", path, f.Type)
		}
		c.Type = typ
		switch m := strings.ToUpper(f.Mode); m {
		case "", modeNullable:
			c.Mode = modeNullable
		case modeRequired, modeRepeated:
			c.Mode = m
		default:
			return nil, fmt.Errorf("field %s has invalid mode %q", path, f.Mode)
		}
		if f.MaxLength < 0 || (f.MaxLength > 0 && typ != typeString && typ != typeBytes) {
			return nil, fmt.Errorf("field %s: maxLength %d is only allowed, positive, on STRING and BYTES", path, f.MaxLength)
		}
		if typ == typeRecord {
			if len(f.Fields) == 0 {
				return nil, fmt.Errorf("field %s is type RECORD but has no schema", path)
			}
			sub, err := normalizeSchema(f.Fields, path+".")
			if err != nil {
				return nil, err
			}
			c.Fields = sub
		} else if len(f.Fields) > 0 {
			return nil, fmt.Errorf("field %s is type %s but has subfields", path, typ)
		}
		out = append(out, &c)
	}
	return out, nil
}

// checkSchemaUpdate applies BigQuery's rules for changing a table's schema:
// columns may be added when NULLABLE or REPEATED (nested ones too) and
// REQUIRED may be relaxed to NULLABLE; anything else is refused with a
// message naming the column. Existing columns keep their stored spelling.
func checkSchemaUpdate(old, upd []*bq.TableFieldSchema, prefix string) error {
	byName := make(map[string]*bq.TableFieldSchema, len(upd))
	for _, f := range upd {
		byName[strings.ToLower(f.Name)] = f
	}
	known := make(map[string]bool, len(old))
	for _, o := range old {
		path := prefix + o.Name
		known[strings.ToLower(o.Name)] = true
		n, ok := byName[strings.ToLower(o.Name)]
		if !ok {
			return fmt.Errorf("Field %s is missing in new schema", path)
		}
		n.Name = o.Name
		if n.Type != o.Type {
			return fmt.Errorf("Field %s has changed type from %s to %s", path, o.Type, n.Type)
		}
		if n.Mode != o.Mode && (o.Mode != modeRequired || n.Mode != modeNullable) {
			return fmt.Errorf("Field %s has changed mode from %s to %s", path, o.Mode, n.Mode)
		}
		if o.Type == typeRecord {
			if err := checkSchemaUpdate(o.Fields, n.Fields, path+"."); err != nil {
				return err
			}
		}
	}
	for _, n := range upd {
		if !known[strings.ToLower(n.Name)] && n.Mode == modeRequired {
			return fmt.Errorf("Cannot add required fields to an existing schema. (field: %s)", prefix+n.Name)
		}
	}
	return nil
}

func schemaEqual(a, b []*bq.TableFieldSchema) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Type != b[i].Type || a[i].Mode != b[i].Mode ||
			a[i].Precision != b[i].Precision || a[i].Scale != b[i].Scale ||
			!schemaEqual(a[i].Fields, b[i].Fields) {
			return false
		}
	}
	return true
}

func storageType(t string) storagepb.TableFieldSchema_Type {
	switch t {
	case typeBoolean:
		return storagepb.TableFieldSchema_BOOL
	case typeInteger:
		return storagepb.TableFieldSchema_INT64
	case typeFloat:
		return storagepb.TableFieldSchema_DOUBLE
	case typeString:
		return storagepb.TableFieldSchema_STRING
	case typeBytes:
		return storagepb.TableFieldSchema_BYTES
	case typeNumeric:
		return storagepb.TableFieldSchema_NUMERIC
	case typeBigNumeric:
		return storagepb.TableFieldSchema_BIGNUMERIC
	case typeDate:
		return storagepb.TableFieldSchema_DATE
	case typeTime:
		return storagepb.TableFieldSchema_TIME
	case typeDatetime:
		return storagepb.TableFieldSchema_DATETIME
	case typeTimestamp:
		return storagepb.TableFieldSchema_TIMESTAMP
	case typeRecord:
		return storagepb.TableFieldSchema_STRUCT
	case typeGeography:
		return storagepb.TableFieldSchema_GEOGRAPHY
	case typeJSON:
		return storagepb.TableFieldSchema_JSON
	}
	return storagepb.TableFieldSchema_TYPE_UNSPECIFIED
}

func storageMode(m string) storagepb.TableFieldSchema_Mode {
	switch m {
	case modeRequired:
		return storagepb.TableFieldSchema_REQUIRED
	case modeRepeated:
		return storagepb.TableFieldSchema_REPEATED
	}
	return storagepb.TableFieldSchema_NULLABLE
}

// storageSchema converts a stored (normalized) schema to the Storage Write
// API's form, as carried in WriteStream.table_schema and updated_schema.
func storageSchema(s *bq.TableSchema) *storagepb.TableSchema {
	if s == nil {
		return &storagepb.TableSchema{}
	}
	return &storagepb.TableSchema{Fields: storageFields(s.Fields)}
}

func storageFields(fields []*bq.TableFieldSchema) []*storagepb.TableFieldSchema {
	out := make([]*storagepb.TableFieldSchema, 0, len(fields))
	for _, f := range fields {
		out = append(out, &storagepb.TableFieldSchema{
			Name:                   f.Name,
			Type:                   storageType(f.Type),
			Mode:                   storageMode(f.Mode),
			Fields:                 storageFields(f.Fields),
			Description:            f.Description,
			MaxLength:              f.MaxLength,
			Precision:              f.Precision,
			Scale:                  f.Scale,
			DefaultValueExpression: f.DefaultValueExpression,
		})
	}
	return out
}
