package keys

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"
)

type inner struct {
	Wait  time.Duration `yaml:"wait"`
	Mode  string        `yaml:"mode"`
	Count int64         `yaml:"count"`
}

type embedded struct {
	Flag bool `yaml:"flag"`
}

type testConfig struct {
	Name     string   `yaml:"name"`
	Brokers  []string `yaml:"brokers"`
	Batch    inner    `yaml:"batch"`
	embedded `yaml:",inline"`
}

var testKeys = []Key{
	{Path: "name", Required: true},
	{Path: "brokers", Required: true},
	{Path: "batch.wait", Default: "1s", Check: NotNegative},
	{Path: "batch.mode", Default: "fast", Check: OneOf("fast", "slow", "careful")},
	{Path: "batch.count", Default: "10", Note: "(ten)"},
	{Path: "flag", Default: "true"},
}

func TestApplyDefaultsFillsOnlyZeroFields(t *testing.T) {
	c := testConfig{Batch: inner{Count: 3}}
	ApplyDefaults(&c, testKeys, false)
	if c.Batch.Wait != time.Second || c.Batch.Mode != "fast" || c.Batch.Count != 3 {
		t.Errorf("defaults applied as %+v; want wait 1s, mode fast, count 3 (set) kept", c.Batch)
	}
	if c.Flag {
		t.Error("a bool default was applied with bools=false: a false in the file would turn true")
	}
	ApplyDefaults(&c, testKeys, true)
	if !c.Flag {
		t.Error("the inlined bool's default was not applied with bools=true")
	}
}

func TestValidateNamesEveryBadKey(t *testing.T) {
	c := testConfig{Batch: inner{Wait: -time.Second, Mode: "quick"}}
	var got []string
	for _, err := range Validate(c, testKeys) {
		got = append(got, err.Error())
	}
	want := []string{
		"name: required",
		"brokers: required",
		"batch.wait: must not be negative",
		`batch.mode: "quick" is not fast, slow or careful`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("Validate = %q\nwant %q", got, want)
	}
	ok := testConfig{Name: "n", Brokers: []string{"b"}}
	if errs := Validate(&ok, testKeys); len(errs) != 0 {
		t.Errorf("Validate of a good config (zero values where defaults apply) = %v", errs)
	}
}

func TestApplyDefaultsPanicsOnADeclarationWithoutAField(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || fmt.Sprint(r) != "keys: no field for batch.missing" {
			t.Errorf("panic = %v; want one naming batch.missing", r)
		}
	}()
	ApplyDefaults(&testConfig{}, []Key{{Path: "batch.missing", Default: "1"}}, true)
}

func TestDefaultCell(t *testing.T) {
	typ := func(path string) reflect.Type {
		f, ok := Key{Path: path}.Field(reflect.ValueOf(testConfig{}))
		if !ok {
			t.Fatalf("no field for %s", path)
		}
		return f.Type()
	}
	for _, c := range []struct {
		k    Key
		want string
	}{
		{testKeys[0], "required"},
		{testKeys[4], "`10` (ten)"},
		{Key{Path: "batch.mode"}, "`\"\"`"},
		{Key{Path: "brokers"}, "`[]`"},
		{Key{Path: "batch.mode", Computed: "<name>.x"}, "`<name>.x`"},
	} {
		if got := c.k.DefaultCell(typ(c.k.Path)); got != c.want {
			t.Errorf("DefaultCell(%s) = %s; want %s", c.k.Path, got, c.want)
		}
	}
}
