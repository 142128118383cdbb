package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for the tool when --local starts
// "tunnel-bench target" or the probe's processes from os.Executable.
func TestMain(m *testing.M) {
	if _, ok := subcommands[firstArg(os.Args[1:])]; ok {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestQuickLocal runs the whole tool as a user would with --quick --local:
// it builds the binaries, starts real server, agent and target processes,
// runs every test and writes the JSON and the chart.
func TestQuickLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	dir := t.TempDir()
	jsonFile, svgFile := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--local", "--quick", "--tests", "all", "--json", jsonFile, "--svg", svgFile}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, stderr.String())
	}
	t.Logf("progress:\n%s\ntable:\n%s", stderr.String(), stdout.String())
	r := readReport(t, jsonFile)
	checkReport(t, r, allTests)
	checkSVG(t, svgFile)
}

func readReport(t *testing.T, file string) report {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("the JSON does not parse: %v", err)
	}
	return r
}

// checkReport wants figures of every test, all of them nonzero (but a
// count of goroutines, which may be 0), ratios wherever there is a
// baseline, and the machine described.
func checkReport(t *testing.T, r report, tests []string) {
	t.Helper()
	seen := map[string]int{}
	for _, f := range r.Figures {
		seen[f.Test]++
		if (f.Tunnel <= 0 && f.Unit != unitGoroutine) || f.Unit == "" {
			t.Errorf("%s %q: figure %v %q", f.Test, f.Case, f.Tunnel, f.Unit)
		}
		if f.Direct > 0 && f.Ratio <= 0 {
			t.Errorf("%s %q: baseline %v but no ratio", f.Test, f.Case, f.Direct)
		}
	}
	for _, name := range tests {
		if seen[name] == 0 {
			t.Errorf("no figures of the %s test", name)
		}
	}
	withRatios := []string{testThroughput, testLatency, testDialRate}
	if runtime.GOOS == "linux" { // elsewhere the pinned test is skipped
		withRatios = append(withRatios, testPinned)
	}
	for _, name := range withRatios {
		if ratios(r, name) == 0 {
			t.Errorf("%s: no figure with a direct baseline", name)
		}
	}
	checkProbe(t, r)
	if r.Machine.NumCPU == 0 || r.Machine.GoVersion == "" || r.Settings.Mode != "local" {
		t.Errorf("machine or settings missing: %+v %+v", r.Machine, r.Settings)
	}
}

// checkProbe wants the probe beside the tunnel in every test that
// measures one, and the figures only --local has.
func checkProbe(t *testing.T, r report) {
	t.Helper()
	probes := map[string]int{}
	cases := map[string]bool{}
	for _, f := range r.Figures {
		if f.Probe > 0 {
			probes[f.Test]++
		}
		if f.Probe > 0 && f.Tunnel > 0 && f.ProbeRatio <= 0 {
			t.Errorf("%s %q: probe %v but no ratio", f.Test, f.Case, f.Probe)
		}
		cases[f.Unit] = true
	}
	for _, name := range []string{testThroughput, testLatency, testDialRate, testIdle} {
		if probes[name] == 0 {
			t.Errorf("%s: no figure with the probe beside the tunnel", name)
		}
	}
	for _, unit := range []string{unitCPUPerGB, unitKiB, unitGoroutine} {
		if !cases[unit] {
			t.Errorf("no figure in %s", unit)
		}
	}
}

func ratios(r report, test string) int {
	n := 0
	for _, f := range r.Figures {
		if f.Test == test && f.Ratio > 0 {
			n++
		}
	}
	return n
}

func checkSVG(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
	}
	if n := strings.Count(string(b), "<rect "); n < 2 {
		t.Errorf("the SVG has %d bars", n-1)
	}
}

// TestFlagErrors: a flag mistake exits 2 with one line naming the flag,
// before anything starts.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "--no-such-flag"},
		{[]string{"--local", "--duration", "0s"}, "--duration"},
		{[]string{"--local", "--duration", "soon"}, "--duration"},
		{[]string{"--local", "--repeat", "0"}, "--repeat"},
		{[]string{"--local", "--streams", "0"}, "--streams"},
		{[]string{"--local", "--idle", "-5"}, "--idle"},
		{[]string{"--local", "--tests", "speed"}, `"speed"`},
		{[]string{"--local", "--uds", "/tmp/x.sock"}, "--uds"},
		{[]string{}, "--uds or --frontend"},
		{[]string{"--frontend", "127.0.0.1:8131"}, "--ca-file"},
		{[]string{"--uds", "/tmp/x.sock", "--tests", "fleet"}, "--fleet-server"},
		{[]string{"--uds", "/tmp/x.sock", "--bin", "/tmp"}, "--bin"},
		{[]string{"--uds", "/tmp/x.sock", "--probe"}, "--probe"},
		{[]string{"--local", "--pin-cpu", "-1"}, "--pin-cpu"},
		{[]string{"probe-server", "--agent", "127.0.0.1:1"}, "--listen"},
		{[]string{"target", "--listen"}, "--listen"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			start := time.Now()
			code := run(tc.args, &stdout, &stderr)
			msg := stderr.String()
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", code, msg)
			}
			lines := strings.Split(strings.TrimSpace(msg), "\n")
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, prog+": ") || !strings.Contains(last, tc.want) {
				t.Errorf("last line %q does not name %s", last, tc.want)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %s: flags must be checked before anything starts", time.Since(start))
			}
		})
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	p := percentilesOf(ds)
	if p.P50 != 50*time.Microsecond || p.P90 != 90*time.Microsecond || p.P99 != 99*time.Microsecond || p.N != 100 {
		t.Errorf("got %+v", p)
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median 3,1,2 = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median 4,1,2,3 = %v", m)
	}
}
