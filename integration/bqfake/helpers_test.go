package bqfake_test

import (
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/bigquery"
	"cloud.google.com/go/bigquery/storage/apiv1/storagepb"
	"cloud.google.com/go/bigquery/storage/managedwriter"
	"cloud.google.com/go/bigquery/storage/managedwriter/adapt"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/bqsink/bqsink/integration/bqfake"
)

const (
	project = "proj"
	dsID    = "ds"
)

func newServer(t *testing.T, opts ...bqfake.Opt) *bqfake.Server {
	t.Helper()
	srv, err := bqfake.New(opts...)
	if err != nil {
		t.Fatalf("start bqfake: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func restClient(t *testing.T, srv *bqfake.Server) *bigquery.Client {
	t.Helper()
	c, err := bigquery.NewClient(t.Context(), project, option.WithEndpoint(srv.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		t.Fatalf("bigquery client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func writeClient(t *testing.T, srv *bqfake.Server, extra ...option.ClientOption) *managedwriter.Client {
	t.Helper()
	opts := append([]option.ClientOption{
		option.WithEndpoint(srv.GRPCEndpoint()),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}, extra...)
	c, err := managedwriter.NewClient(t.Context(), project, opts...)
	if err != nil {
		t.Fatalf("managedwriter client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// createTable creates a table in dsID (which must exist) over REST.
func createTable(t *testing.T, c *bigquery.Client, name string, schema bigquery.Schema) *bigquery.Table {
	t.Helper()
	tbl := c.Dataset(dsID).Table(name)
	if err := tbl.Create(t.Context(), &bigquery.TableMetadata{Schema: schema}); err != nil {
		t.Fatalf("create table %s: %v", name, err)
	}
	return tbl
}

// descriptorFor builds the writer schema exactly as the project's contract
// says bq/ does: proto2 from the table schema with NUMERIC, BIGNUMERIC, TIME
// and DATETIME as strings, normalized for the wire.
func descriptorFor(t *testing.T, schema bigquery.Schema) (protoreflect.MessageDescriptor, *descriptorpb.DescriptorProto) {
	t.Helper()
	ss, err := adapt.BQSchemaToStorageTableSchema(schema)
	if err != nil {
		t.Fatalf("storage schema: %v", err)
	}
	var opts []adapt.ProtoConversionOption
	for _, typ := range []storagepb.TableFieldSchema_Type{
		storagepb.TableFieldSchema_NUMERIC, storagepb.TableFieldSchema_BIGNUMERIC,
		storagepb.TableFieldSchema_TIME, storagepb.TableFieldSchema_DATETIME,
	} {
		opts = append(opts, adapt.WithProtoMapping(adapt.ProtoMapping{FieldType: typ, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING}))
	}
	d, err := adapt.StorageSchemaToProtoDescriptorWithOptions(ss, "root", opts...)
	if err != nil {
		t.Fatalf("proto descriptor: %v", err)
	}
	md := d.(protoreflect.MessageDescriptor)
	dp, err := adapt.NormalizeDescriptor(md)
	if err != nil {
		t.Fatalf("normalize descriptor: %v", err)
	}
	return md, dp
}

// msg is a tiny builder for dynamic rows: set("a", v) and friends.
type msg struct {
	t *testing.T
	m protoreflect.Message
}

func newMsg(t *testing.T, md protoreflect.MessageDescriptor) msg {
	return msg{t, dynamicpb.NewMessage(md)}
}

func (m msg) fd(name string) protoreflect.FieldDescriptor {
	m.t.Helper()
	fd := m.m.Descriptor().Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		m.t.Fatalf("descriptor %s has no field %q", m.m.Descriptor().FullName(), name)
	}
	return fd
}

func (m msg) set(name string, v any) msg {
	m.m.Set(m.fd(name), protoreflect.ValueOf(v))
	return m
}

func (m msg) sub(name string) msg { return msg{m.t, m.m.Mutable(m.fd(name)).Message()} }

func (m msg) add(name string, vs ...any) msg {
	l := m.m.Mutable(m.fd(name)).List()
	for _, v := range vs {
		l.Append(protoreflect.ValueOf(v))
	}
	return m
}

func (m msg) addMsg(name string) msg {
	l := m.m.Mutable(m.fd(name)).List()
	e := l.NewElement()
	l.Append(e)
	return msg{m.t, e.Message()}
}

func (m msg) bytes() []byte {
	m.t.Helper()
	b, err := proto.MarshalOptions{AllowPartial: true}.Marshal(m.m.Interface())
	if err != nil {
		m.t.Fatalf("marshal row: %v", err)
	}
	return b
}

// readAll reads the table through the real REST client.
func readAll(t *testing.T, tbl *bigquery.Table) [][]bigquery.Value {
	t.Helper()
	it := tbl.Read(t.Context())
	var out [][]bigquery.Value
	for {
		var row []bigquery.Value
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", tbl.TableID, err)
		}
		out = append(out, row)
	}
}

func googleAPIError(t *testing.T, err error) *googleapi.Error {
	t.Helper()
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		t.Fatalf("want *googleapi.Error, got %T: %v", err, err)
	}
	return ge
}

// eventually polls f until it returns true or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		<-tick.C
	}
}
