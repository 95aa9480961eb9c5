package stack

import (
	"context"
	"errors"
	"fmt"

	"cloud.google.com/go/bigquery"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

// Table is a table read back through the real BigQuery client.
type Table struct {
	Schema bigquery.Schema
	Rows   []map[string]bigquery.Value
}

// ReadTable reads every row of a table in the stack's dataset through the
// BigQuery Go client, over REST, as a user's query tool would see them.
func (st *Stack) ReadTable(ctx context.Context, table string) (Table, error) {
	c, err := bigquery.NewClient(ctx, Project, option.WithEndpoint(st.BigQuery.RESTEndpoint()), option.WithoutAuthentication())
	if err != nil {
		return Table{}, fmt.Errorf("bigquery client: %w", err)
	}
	defer c.Close()
	md, err := c.Dataset(Dataset).Table(table).Metadata(ctx)
	if err != nil {
		return Table{}, fmt.Errorf("table %s: %w", table, err)
	}
	out := Table{Schema: md.Schema}
	it := c.Dataset(Dataset).Table(table).Read(ctx)
	for {
		row := map[string]bigquery.Value{}
		err := it.Next(&row)
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read %s: %w", table, err)
		}
		out.Rows = append(out.Rows, row)
	}
}
