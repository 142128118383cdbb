package tunnel

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// testLogger sends the library's logs to t.Log, shown on failure or -v.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// logRecord keeps the lines a logger wrote, and shows them with t.Log too.
type logRecord struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

// recordLogs returns a logger that writes to rec.
func recordLogs(t *testing.T) (*slog.Logger, *logRecord) {
	rec := &logRecord{t: t}
	return slog.New(slog.NewTextHandler(rec, &slog.HandlerOptions{Level: slog.LevelDebug})), rec
}

func (r *logRecord) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.lines = append(r.lines, string(p))
	r.mu.Unlock()
	r.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// has reports whether a line holds every one of parts.
func (r *logRecord) has(parts ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if all(parts, func(p string) bool { return strings.Contains(l, p) }) {
			return true
		}
	}
	return false
}

func all[T any](s []T, f func(T) bool) bool {
	for _, v := range s {
		if !f(v) {
			return false
		}
	}
	return true
}
