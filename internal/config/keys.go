package config

import (
	"fmt"
	"net"
	"strconv"

	"go.uber.org/zap/zapcore"

	"github.com/bqsink/bqsink/internal/keys"
	"github.com/bqsink/bqsink/sink"
)

// Keys declares every key of the config file, in the README's order: the
// sink's (sink.Keys) and the process's own, placed where the table lists
// them.
func Keys() []keys.Key {
	var out []keys.Key
	for _, k := range sink.Keys() {
		if k.Path == "unknown_schema_grace" {
			out = append(out, processKeys...)
		}
		out = append(out, k)
	}
	return out
}

// processKeys are the keys of what main wires: the HTTP server and the log.
var processKeys = []keys.Key{
	{Path: "http.listen", Default: ":8080", Check: checkListen, Doc: "address for `/metrics`, `/healthz`, `/readyz`"},
	{Path: "log.level", Default: "info", Check: checkLogLevel, Doc: "`debug`, `info`, `warn` or `error`; JSON lines on stdout"},
}

func checkListen(v any) string {
	addr := v.(string)
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return ""
	}
	hint := ""
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		hint = fmt.Sprintf(`; write ":%s" for that port on every interface`, addr)
	}
	return fmt.Sprintf("%q is not host:port%s", addr, hint)
}

func checkLogLevel(v any) string {
	if _, err := zapcore.ParseLevel(v.(string)); err != nil {
		return fmt.Sprintf("%q is not debug, info, warn or error", v)
	}
	return ""
}
