package admin

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/tunnel-project/tunnel/cmd/internal/admin/admintest"
	"github.com/tunnel-project/tunnel/cmd/internal/cli"
)

func TestHealthEndpoints(t *testing.T) {
	var agentsErr error = errors.New("0 of at least 1 agents registered")
	h := NewHandler(NewRegistry(), Health{
		Live: []Check{Ping},
		Ready: []Check{
			{Name: "listeners", Fn: func() error { return nil }},
			{Name: "agents", Fn: func() error { return agentsErr }},
		},
	}, false)
	for _, tc := range []struct {
		path string
		code int
		body string // exactly
	}{
		{"/readyz", 503, "[-]agents failed: 0 of at least 1 agents registered\nreadyz check failed\n"},
		{"/readyz?verbose", 503, "[+]listeners ok\n[-]agents failed: 0 of at least 1 agents registered\nreadyz check failed\n"},
		{"/readyz?exclude=agents", 200, "ok"},
		{"/readyz?verbose&exclude=agents", 200, "[+]listeners ok\nreadyz check passed\n"},
		{"/readyz/listeners", 200, "[+]listeners ok\nreadyz check passed\n"},
		{"/readyz/agents", 503, "[-]agents failed: 0 of at least 1 agents registered\nreadyz check failed\n"},
		{"/healthz", 200, "ok"},
		{"/livez", 200, "ok"},
		{"/livez?verbose", 200, "[+]ping ok\nlivez check passed\n"},
		{"/readyz/nonesuch", 404, ""},
	} {
		code, body := admintest.Get(t, h, tc.path)
		if code != tc.code || (tc.body != "" && body != tc.body) {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, code, body, tc.code, tc.body)
		}
	}
	agentsErr = nil
	if code, body := admintest.Get(t, h, "/readyz"); code != 200 || body != "ok" {
		t.Errorf("GET /readyz once every check passes: %d %q, want 200 \"ok\"", code, body)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	code, body := admintest.Get(t, NewHandler(NewRegistry(), Health{}, false), "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	b := Build()
	for _, want := range []string{
		`tunnel_build_info{commit="` + b.Commit + `",go_version="` + b.GoVersion + `",version="` + b.Version + `"} 1`,
		"go_goroutines ", "process_resident_memory_bytes ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestProfilingOnlyWhenEnabled(t *testing.T) {
	for _, on := range []bool{false, true} {
		code, body := admintest.Get(t, NewHandler(NewRegistry(), Health{}, on), "/debug/pprof/")
		if got := code == 200 && strings.Contains(body, "goroutine"); got != on {
			t.Errorf("profiling %v: GET /debug/pprof/ = %d", on, code)
		}
	}
}

func TestLoops(t *testing.T) {
	l := NewLoops("agent", "uds")
	if err := l.Check(); err == nil || !strings.Contains(err.Error(), "agent, uds") {
		t.Fatalf("before any loop runs: %v", err)
	}
	inside := make(chan error, 1)
	release := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run("agent", func() error {
			l.Run("uds", func() error {
				inside <- l.Check()
				<-release
				return nil
			})
			return nil
		})
	}()
	if err := <-inside; err != nil {
		t.Fatalf("while both run: %v", err)
	}
	close(release)
	<-done
	if err := l.Check(); err == nil {
		t.Fatal("after both returned: nil")
	}
}

// TestLoopsGo: a loop started with Go counts as running as soon as Go
// returns (the server reports itself started right after), and no longer
// once its error arrives.
func TestLoopsGo(t *testing.T) {
	l := NewLoops("uds")
	release := make(chan struct{})
	errc := make(chan error, 1)
	l.Go("uds", func() error { <-release; return errors.New("closed") }, errc)
	if err := l.Check(); err != nil {
		t.Fatalf("right after Go: %v", err)
	}
	close(release)
	if err := <-errc; err == nil || err.Error() != "closed" {
		t.Fatalf("loop error: %v", err)
	}
	if err := l.Check(); err == nil {
		t.Fatal("after the loop returned: nil")
	}
}

func TestBuildFallbacks(t *testing.T) {
	b := Build()
	if b.Version == "" || b.Commit == "" || !strings.HasPrefix(b.GoVersion, "go") {
		t.Fatalf("Build() = %+v: empty fields", b)
	}
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v9.9.9", "abc123"
	if b := Build(); b.Version != "v9.9.9" || b.Commit != "abc123" {
		t.Fatalf("with -ldflags values: %+v", b)
	}
}

func TestStart(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if s, err := Start(Flags{}, http.NotFoundHandler(), log); s != nil || err != nil {
		t.Fatalf("empty address: %v, %v; want disabled", s, err)
	}
	_, err := Start(Flags{Addr: "nonsense"}, http.NotFoundHandler(), log)
	var fe *cli.FlagError
	if !errors.As(err, &fe) || fe.Flag != "admin-listen-address" {
		t.Fatalf("bad address: %v, want a FlagError for admin-listen-address", err)
	}
	s, err := Start(Flags{Addr: "127.0.0.1:0"}, NewHandler(NewRegistry(), Health{Live: []Check{Ping}}, false), log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
