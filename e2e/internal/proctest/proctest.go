// Package proctest holds the small helpers the e2e packages share for
// running the binaries as processes: their captured output, reading their
// slog text lines, and unix socket paths short enough for sun_path.
package proctest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// LogBuffer collects a process's stdout and stderr; safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// LogValue returns the value of key in a slog text line, unquoted, or "".
func LogValue(line, key string) string {
	i := strings.Index(" "+line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+1:]
	if strings.HasPrefix(v, `"`) {
		q, err := strconv.QuotedPrefix(v)
		if err != nil {
			return ""
		}
		s, _ := strconv.Unquote(q)
		return s
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// SocketPath returns a short path for a unix socket in a directory removed
// at the test's end (sun_path holds 108 bytes, and t.TempDir paths grow
// with the test name).
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tnl-uds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "connect.sock")
}
