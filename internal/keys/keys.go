// Package keys declares the keys of bqsink's config file, each in one
// place: its YAML path, its default, what it means, whether it is a secret,
// and what values it takes. The packages that own a section of the config
// declare its keys (sink.Keys); this package turns the declarations into
// what the rest derives from them: defaults applied to a config struct,
// per-key validation, and the default as the README's Configuration table
// shows it.
package keys

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Key declares one key of the config file.
type Key struct {
	// Path is the key's YAML path from the top of the file:
	// "batch.max_wait". A map (tables) is one key.
	Path string
	// Default is the key's default as written in YAML ("1s", "10000",
	// "true"); empty means the zero value of its type.
	Default string
	// Required keys have no default; a config without them is refused.
	Required bool
	// Computed stands for a default that other keys decide
	// ("<group_id>.dlq"); the owner of the key applies it.
	Computed string
	// Note follows the default in the README: "(64 MiB)".
	Note string
	// Doc says what the key does, in one line of Markdown: the README's
	// Configuration table shows it.
	Doc string
	// Secret keys are never logged: the startup log says only whether
	// they are set. SecretURL keys lose the password a URL may carry.
	Secret, SecretURL bool
	// Check, when set, says what is wrong with a value of the key, or ""
	// when nothing is. It is called with the value after defaults, as the
	// key's Go type (string, int, int64, time.Duration, bool, ...).
	Check func(v any) string
}

// Field returns the value at k's path in v, a struct (or pointer to one)
// whose fields carry yaml tags, looking through inlined structs; false if
// there is no such field.
func (k Key) Field(v reflect.Value) (reflect.Value, bool) {
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	for part := range strings.SplitSeq(k.Path, ".") {
		f, ok := fieldByTag(v, part)
		if !ok {
			return reflect.Value{}, false
		}
		v = f
	}
	return v, true
}

func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	if v.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			if sub, ok := fieldByTag(v.Field(i), name); ok {
				return sub, true
			}
			continue
		}
		if tag == name && f.IsExported() {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// ApplyDefaults sets every field of cfg (a pointer to a config struct)
// that holds its zero value to its key's default. Booleans are set only
// when bools is true: a false in the file cannot be told from unset, so
// their defaults go into the config the file is read over, not after.
// It panics on a declaration that does not fit its field: that is a bug of
// the declarations, which the owner's tests catch.
func ApplyDefaults(cfg any, ks []Key, bools bool) {
	v := reflect.ValueOf(cfg)
	for _, k := range ks {
		if k.Default == "" || k.Required || k.Computed != "" {
			continue
		}
		f, ok := k.Field(v)
		if !ok {
			panic(fmt.Sprintf("keys: no field for %s", k.Path))
		}
		if !f.IsZero() || (f.Kind() == reflect.Bool && !bools) {
			continue
		}
		if err := setText(f, k.Default); err != nil {
			panic(fmt.Sprintf("keys: default of %s: %v", k.Path, err))
		}
	}
}

// setText sets a scalar field from its YAML text.
func setText(f reflect.Value, s string) error {
	switch {
	case f.Type() == reflect.TypeFor[time.Duration]():
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case f.CanInt():
		i, err := strconv.ParseInt(s, 10, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetInt(i)
	default:
		return fmt.Errorf("a %s cannot take a default", f.Type())
	}
	return nil
}

// Validate checks cfg (a config struct, or a pointer to one) against the
// declarations: a Required key must be set, and a key's Check must pass.
// It returns one "path: problem" error per bad key.
func Validate(cfg any, ks []Key) []error {
	v := reflect.ValueOf(cfg)
	var errs []error
	for _, k := range ks {
		f, ok := k.Field(v)
		if !ok {
			continue
		}
		if k.Required && (f.IsZero() || (f.Kind() == reflect.Slice || f.Kind() == reflect.Map) && f.Len() == 0) {
			errs = append(errs, fmt.Errorf("%s: required", k.Path))
			continue
		}
		if k.Check == nil {
			continue
		}
		if msg := k.Check(f.Interface()); msg != "" {
			errs = append(errs, fmt.Errorf("%s: %s", k.Path, msg))
		}
	}
	return errs
}

// DefaultCell is k's default as the README's table shows it: "required",
// "none", or the YAML value in backquotes, followed by the note.
func (k Key) DefaultCell(field reflect.Type) string {
	var cell string
	switch {
	case k.Required:
		return "required"
	case k.Computed != "":
		cell = "`" + k.Computed + "`"
	case k.Default != "":
		cell = "`" + k.Default + "`"
	default:
		cell = zeroText(field)
	}
	if k.Note != "" {
		cell += " " + k.Note
	}
	return cell
}

// zeroText is the README's spelling of a type's zero value as a default.
func zeroText(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "`\"\"`"
	case reflect.Bool:
		return "`false`"
	case reflect.Map:
		return "`{}`"
	case reflect.Slice:
		return "`[]`"
	case reflect.Pointer:
		return "none"
	}
	return "`0`"
}

// Checks for Key.Check.

// OneOf accepts the given values, and "" (the default).
func OneOf(values ...string) func(any) string {
	return func(v any) string {
		s := v.(string)
		if s == "" || slices.Contains(values, s) {
			return ""
		}
		return fmt.Sprintf("%q is not %s", s, orList(values))
	}
}

func orList(values []string) string {
	switch len(values) {
	case 1:
		return values[0]
	case 2:
		return values[0] + " or " + values[1]
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

// NotNegative refuses a negative number or duration.
func NotNegative(v any) string {
	if reflect.ValueOf(v).Int() < 0 {
		return "must not be negative"
	}
	return ""
}
