package integration

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/bqsink/bqsink/integration/itest"
	"github.com/bqsink/bqsink/integration/stack"
	"github.com/bqsink/bqsink/internal/testcert"
)

// A config without an errors section starts on a cluster where nobody
// created the dead-letter topic: bqsink creates it, with a
// max.message.bytes that takes the source topic's largest record and the
// headers bqsink adds, and dead-letters into it. Two replicas starting at
// once both start.
func TestDeadLetterTopicCreatedWhenMissing(t *testing.T) {
	itest.SkipShortParallel(t)
	e := itest.NewEnv(t)
	ctx := t.Context()
	const (
		group  = "g-dlq-create"
		source = "dlq.source"
		dlq    = group + ".dlq" // the default: no errors section in the config
	)
	sourceMax := 5 << 20
	if err := e.St.CreateTopic(ctx, source, 2, stack.MaxMessageBytes(sourceMax)); err != nil {
		t.Fatal(err)
	}
	cfg := itest.DaemonConfigNoDLQ(e, group)
	cfg.Set("kafka.topics", []string{source}).Set("tables", map[string]any{source: "dlq_source"})

	updates := stack.StockUpdates(50, 7)
	var recs []*kgo.Record
	for _, u := range updates {
		r, err := e.Schemas.Record(u)
		if err != nil {
			t.Fatal(err)
		}
		r.Topic = source
		recs = append(recs, r)
	}
	recs = append(recs, &kgo.Record{Topic: source, Value: []byte("not the wire format")})
	if err := e.St.Produce(ctx, recs...); err != nil {
		t.Fatal(err)
	}

	a, b := itest.StartDaemon(t, cfg), itest.StartDaemon(t, cfg)
	if _, err := e.St.WaitCommitted(ctx, group, source); err != nil {
		t.Fatalf("%v; %s: %v; %s: %v", err, a.Name, a.Problems(), b.Name, b.Problems())
	}
	created := len(a.LogsMatching(itest.MsgIs("created the dead-letter topic"))) + len(b.LogsMatching(itest.MsgIs("created the dead-letter topic")))
	if created != 1 {
		t.Errorf("%d daemons say they created the dead-letter topic, want one", created)
	}
	got := topicConfig(t, e, dlq, "max.message.bytes")
	if want := strconv.Itoa(sourceMax + 64<<10); got != want {
		t.Errorf("%s max.message.bytes = %s, want %s: the source topic's %d plus 64 KiB for bqsink's headers", dlq, got, want, sourceMax)
	}
	dead, err := e.St.ReadTopic(ctx, dlq)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || string(dead[0].Value) != "not the wire format" {
		t.Errorf("the dead-letter topic holds %d records, want the one bad record", len(dead))
	}
	for _, d := range []*itest.Daemon{a, b} {
		d.Shutdown(15 * time.Second)
		itest.LogProblems(t, d)
	}
}

// Where the client may not create topics (ACLs, a topic-creation policy),
// the start ends with exit 1 and one line naming errors.dlq_topic and
// saying what to create.
func TestDeadLetterTopicCreationRefused(t *testing.T) {
	itest.SkipShortParallel(t)
	e := itest.NewEnv(t)
	const group = "g-dlq-acl"
	topic := func(name string, ops ...kmsg.ACLOperation) []kfake.ACL {
		var out []kfake.ACL
		for _, op := range ops {
			out = append(out, kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true})
		}
		return out
	}
	var acls []kfake.ACL
	acls = append(acls, topic("acl.source", kmsg.ACLOperationDescribe, kmsg.ACLOperationRead, kmsg.ACLOperationDescribeConfigs)...)
	// It may see and write the dead-letter topic, not create it.
	acls = append(acls, topic(group+".dlq", kmsg.ACLOperationDescribe, kmsg.ACLOperationWrite)...)
	acls = append(acls, kfake.ACL{Resource: kmsg.ACLResourceTypeGroup, Name: group, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationRead, Allow: true})
	ca := testcert.NewCA(t, "kafka CA")
	k := startKfake(t, []kfake.Opt{
		kfake.TLS(ca.ServerTLS(t, nil)), kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser("SCRAM-SHA-256", "admin", "admin-secret"),
		kfake.User("SCRAM-SHA-256", "bqsink", "bqsink-secret", acls...),
	}, kgo.DialTLSConfig(&tls.Config{RootCAs: ca.Pool}), kgo.SASL(scram.Auth{User: "admin", Pass: "admin-secret"}.AsSha256Mechanism()))
	k.createTopic(t, "acl.source", 1)

	cfg := itest.DaemonConfigNoDLQ(e, group)
	cfg.Set("kafka.brokers", k.brokers).Set("kafka.topics", []string{"acl.source"}).
		MergeYAML(fmt.Sprintf("kafka: {tls: {enabled: true, ca_file: %q}, sasl: {mechanism: scram-sha-256, username: bqsink, password: bqsink-secret}}", ca.File))
	requireStartupRefused(t, cfg, "errors.dlq_topic", group+".dlq", "does not exist", "refused to create it", "TOPIC_AUTHORIZATION_FAILED", "create it with max.message.bytes")
}

// topicConfig reads one config value of topic.
func topicConfig(t *testing.T, e *itest.Env, topic, key string) string {
	t.Helper()
	rcs, err := itest.AdminClient(t, e).DescribeTopicConfigs(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := rcs.On(topic, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rc.Configs {
		if c.Key == key && c.Value != nil {
			return *c.Value
		}
	}
	t.Fatalf("topic %s has no %s", topic, key)
	return ""
}
