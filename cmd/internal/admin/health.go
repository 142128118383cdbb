package admin

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Check is one named health check; Fn returns nil when healthy and an
// error saying what is wrong otherwise. Fn must be fast and must not block.
type Check struct {
	Name string
	Fn   func() error
}

// Health is what the admin listener's health endpoints report.
type Health struct {
	// Live are the checks of /livez and /healthz: the process is running
	// and its serving loops have not stopped. A failure means restart it.
	Live []Check
	// Ready are the checks of /readyz: the process is ready for traffic.
	Ready []Check
}

// Ping always passes: answering at all shows the process is up.
var Ping = Check{Name: "ping", Fn: func() error { return nil }}

// handleHealth serves one health endpoint on mux the way kube-apiserver does:
//
//	GET /readyz          200 "ok", or 503 listing the failing checks
//	GET /readyz?verbose  every check as "[+]name ok" or "[-]name failed: reason"
//	GET /readyz?exclude=name  (repeatable) skips checks
//	GET /readyz/name     one check alone
//
// The last line of a verbose or failing answer is "<endpoint> check passed"
// or "<endpoint> check failed".
func handleHealth(mux *http.ServeMux, endpoint string, checks []Check) {
	mux.HandleFunc("GET /"+endpoint, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		run := slices.DeleteFunc(slices.Clone(checks), func(c Check) bool { return slices.Contains(q["exclude"], c.Name) })
		_, verbose := q["verbose"]
		report(w, endpoint, run, verbose)
	})
	for _, c := range checks {
		mux.HandleFunc("GET /"+endpoint+"/"+c.Name, func(w http.ResponseWriter, r *http.Request) {
			report(w, endpoint, []Check{c}, true)
		})
	}
}

// report runs checks and writes the answer.
func report(w http.ResponseWriter, endpoint string, checks []Check, verbose bool) {
	var b strings.Builder
	failed := false
	for _, c := range checks {
		if err := c.Fn(); err != nil {
			failed = true
			fmt.Fprintf(&b, "[-]%s failed: %s\n", c.Name, oneLine(err))
		} else if verbose {
			fmt.Fprintf(&b, "[+]%s ok\n", c.Name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case failed:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(&b, "%s check failed\n", endpoint)
	case verbose:
		fmt.Fprintf(&b, "%s check passed\n", endpoint)
	default:
		b.WriteString("ok")
	}
	w.Write([]byte(b.String()))
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// Loops tracks the long-running loops of a process (accept loops, the
// agent's connect loop). Its Check passes while every loop named at
// NewLoops is running: not before it starts, not after it returns.
type Loops struct {
	mu      sync.Mutex
	names   []string
	running map[string]bool
}

// NewLoops expects the loops names.
func NewLoops(names ...string) *Loops {
	return &Loops{names: names, running: make(map[string]bool)}
}

// Run runs fn as the loop name, marked running until fn returns.
func (l *Loops) Run(name string, fn func() error) error {
	l.set(name, true)
	defer l.set(name, false)
	return fn()
}

// Go runs fn as the loop name on a new goroutine and sends its error to
// errc. The loop is marked running before Go returns, so a process that
// reports itself started after its Go calls is live at once.
func (l *Loops) Go(name string, fn func() error, errc chan<- error) {
	l.set(name, true)
	go func() {
		err := fn()
		l.set(name, false)
		errc <- err
	}()
}

func (l *Loops) set(name string, running bool) {
	l.mu.Lock()
	l.running[name] = running
	l.mu.Unlock()
}

// Check returns an error naming the expected loops that are not running.
func (l *Loops) Check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var down []string
	for _, n := range l.names {
		if !l.running[n] {
			down = append(down, n)
		}
	}
	if len(down) > 0 {
		return errors.New("not running: " + strings.Join(down, ", "))
	}
	return nil
}
