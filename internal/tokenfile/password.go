package tokenfile

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// Password is a password kept in a file (kafka.sasl.password_file,
// schema_registry.password_file: a Kubernetes Secret mounted as a volume),
// read again whenever the file changes, so that a password rotated in the
// Secret is used without a restart. Set Path, Key and Log, then call Value
// once at startup: that read must succeed. Safe for concurrent use.
//
// Unlike a token, which expires and is worth nothing once it has, a
// password that cannot be read again (the file gone, unreadable or
// emptied) is not an error once one was read: Value keeps returning the
// last one read and logs a warning, once per problem, naming the key and
// the file. The password itself is never logged.
type Password struct {
	Path string      // the file
	Key  string      // the config key naming it, for the log
	Log  *zap.Logger // where warnings go; nil: nowhere

	mu      sync.Mutex
	fi      os.FileInfo // of the file last read, nil before the first read
	value   string      // the password last read, "" before the first read
	problem string      // what was last warned about, "" when the file is fine
}

// Value returns the file's password: its content with one trailing line
// ending (\n or \r\n) removed, nothing else, so that spaces a password
// ends with are kept. The file is read again when it is a different file
// (a Kubernetes Secret's update swaps it), or its modification time or
// size changed, since the last read.
//
// Before a password was read, a file that cannot be read or holds nothing
// is an error naming the file. After, Value returns the last password read
// and a nil error, logging a warning that says what is wrong.
func (p *Password) Value() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fi, err := os.Stat(p.Path)
	if err == nil && p.fi != nil && os.SameFile(fi, p.fi) && fi.ModTime().Equal(p.fi.ModTime()) && fi.Size() == p.fi.Size() {
		return p.value, nil
	}
	var value string
	if err == nil {
		value, err = ReadPassword(p.Path)
	}
	if err != nil {
		if p.value == "" {
			return "", err
		}
		if msg := err.Error(); msg != p.problem {
			p.problem = msg
			p.warn("cannot read the password file again; the last password read stays in use", zap.Error(err))
		}
		return p.value, nil
	}
	if p.value != "" && (value != p.value || p.problem != "") {
		p.info("read the password file again; the next authentication uses what it holds")
	}
	p.fi, p.value, p.problem = fi, value, ""
	return value, nil
}

// ReadPassword reads the password in the file at path as Value does: its
// content less one trailing line ending. A file holding nothing else is an
// error naming it.
func ReadPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := PasswordOf(b)
	if s == "" {
		return "", fmt.Errorf("%s is empty: it holds no password", path)
	}
	return s, nil
}

// PasswordOf is the password of a file holding b: b less one trailing line
// ending (\n or \r\n).
func PasswordOf(b []byte) string {
	s := string(b)
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		s = strings.TrimSuffix(t, "\r")
	}
	return s
}

func (p *Password) warn(msg string, fields ...zap.Field) {
	if p.Log != nil {
		p.Log.Warn(msg, append([]zap.Field{zap.String("key", p.Key), zap.String("file", p.Path)}, fields...)...)
	}
}

func (p *Password) info(msg string) {
	if p.Log != nil {
		p.Log.Info(msg, zap.String("key", p.Key), zap.String("file", p.Path))
	}
}
