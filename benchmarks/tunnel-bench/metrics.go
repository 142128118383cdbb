package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Go runtime gauges read from a process's /metrics: the tunnel binaries'
// admin listener (Prometheus' Go collector) or a probe process's own.
const (
	metricGoroutines = "go_goroutines"
	metricGOMAXPROCS = "go_sched_gomaxprocs_threads"
)

// scrapeTimeout bounds one read of /metrics.
const scrapeTimeout = 10 * time.Second

// serveMetrics serves the two gauges above on addr in the Prometheus text
// format, for as long as the process runs (a probe process is killed,
// never closed). It returns the address it listens on.
func serveMetrics(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s %d\n%s %d\n", metricGoroutines, runtime.NumGoroutine(), metricGOMAXPROCS, runtime.GOMAXPROCS(0))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: scrapeTimeout}
	go srv.Serve(ln)
	return ln.Addr().String(), nil
}

// scrape reads the unlabelled gauge name from http://addr/metrics.
func scrape(ctx context.Context, addr, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reading %s from %s: %w", name, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("reading %s from %s: %s", name, addr, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s from %s: %w", name, addr, err)
	}
	return 0, fmt.Errorf("%s serves no %s", addr, name)
}
