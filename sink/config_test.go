package sink

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Kafka = KafkaConfig{Brokers: []string{"k:9092"}, GroupID: "g", Topics: []string{"orders"}}
	c.SchemaRegistry.URL = "http://registry:8081"
	c.BigQuery.Project, c.BigQuery.Dataset = "p", "d"
	return c
}

func TestDefaultTableSanitizesTopic(t *testing.T) {
	for topic, want := range map[string]string{
		"orders":                           "orders",
		"sms_physical_stock_updated_topic": "sms_physical_stock_updated_topic",
		"shop.orders-v1":                   "shop_orders_v1",
		"a/b c":                            "a_b_c",
	} {
		if got := DefaultTable(topic); got != want {
			t.Errorf("DefaultTable(%q) = %q, want %q", topic, got, want)
		}
	}
	c := validConfig()
	c.Tables = map[string]TableRoute{"orders": Route("sales.orders_raw")}
	if got := c.TableFor("orders"); got != "sales.orders_raw" {
		t.Errorf("configured table ignored: %q", got)
	}
}

// Two topics whose default names collide would silently share a table;
// that is refused at startup, naming both. Routing them to one table on
// purpose through tables: is allowed.
func TestTableCollisionsRefused(t *testing.T) {
	c := validConfig()
	c.Kafka.Topics = []string{"orders.v1", "orders_v1", "other"}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "orders.v1, orders_v1") {
		t.Fatalf("want a collision naming both topics, got %v", err)
	}
	c.Tables = map[string]TableRoute{"orders.v1": Route("orders_v1")}
	if err := c.Validate(); err != nil {
		t.Fatalf("explicit routing to one table is allowed: %v", err)
	}
}

func TestValidateNamesEveryBadKey(t *testing.T) {
	c := Config{
		Kafka:  KafkaConfig{Topics: []string{"", "^bad("}, StartOffset: "newest", RebalanceTimeout: -time.Second},
		Batch:  BatchConfig{MaxBytes: -1, MaxInflight: -1},
		Tables: map[string]TableRoute{"t": Route("a.b.c")},
	}
	err := c.Validate()
	for _, key := range []string{"kafka.brokers", "kafka.group_id", "kafka.topics[0]", "kafka.topics[1]",
		"kafka.start_offset", "kafka.rebalance_timeout", "batch.max_bytes", "batch.max_inflight", "tables.t"} {
		if err == nil || !strings.Contains(err.Error(), key+":") {
			t.Errorf("missing %s in %v", key, err)
		}
	}
	if err := validConfig().Validate(); err != nil {
		t.Errorf("minimal config: %v", err)
	}
}

// franz-go treats every entry as a regex once one is: literal topics must
// then match only themselves.
func TestConsumeTopicsAnchorsLiteralsAmongRegexes(t *testing.T) {
	got, regex := consumeTopics([]string{"orders", "^shop\\..*"})
	if !regex || got[0] != "^orders$" || got[1] != "^shop\\..*" {
		t.Fatalf("got %q regex=%v", got, regex)
	}
	got, regex = consumeTopics([]string{"a.b"})
	if regex || got[0] != "a.b" {
		t.Fatalf("literal-only list changed: %q %v", got, regex)
	}
	got, _ = consumeTopics([]string{"a.b", "^x"})
	if got[0] != `^a\.b$` {
		t.Fatalf("dot not quoted: %q", got[0])
	}
}
