package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Units of the figures.
const (
	unitMBps      = "MB/s"
	unitMicros    = "µs"
	unitPerSecond = "tunnels/s"
	unitKiB       = "KiB/tunnel"
	unitKiBAgent  = "KiB/agent"
	unitCPUPerGB  = "CPU-s/GB"
	unitMillis    = "ms"
	unitGoroutine = "goroutines/tunnel"
)

// goal is a target of the benchmark: a bound on the ratio (or, for figures
// without a baseline, on the tunnel figure itself).
type goal struct {
	AtLeast bool    `json:"atLeast"` // true: figure ≥ Value; false: figure ≤ Value
	Value   float64 `json:"value"`
	OnRatio bool    `json:"onRatio"` // the bound applies to the ratio, not the tunnel figure
}

func atLeastRatio(v float64) *goal { return &goal{AtLeast: true, Value: v, OnRatio: true} }
func atMostRatio(v float64) *goal  { return &goal{Value: v, OnRatio: true} }
func atMost(v float64) *goal       { return &goal{Value: v} }

// text prints the goal, with unit when it bounds the figure itself.
func (g *goal) text(unit string) string {
	if g == nil {
		return ""
	}
	op := "≤"
	if g.AtLeast {
		op = "≥"
	}
	if g.OnRatio {
		return fmt.Sprintf("%s %s×", op, trim(g.Value))
	}
	return fmt.Sprintf("%s %s %s", op, trim(g.Value), unit)
}

func trim(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}

// figure is one row of the results: a case measured through the tunnel
// and, where it has them, on its baseline and on the probe (a plain relay
// with one TLS 1.3 connection per tunnel and no multiplexer: the least an
// encrypted tunnel costs here).
type figure struct {
	Test string `json:"test"`
	Case string `json:"case"`
	Unit string `json:"unit"`
	// Baseline names what Direct measured: "direct TCP" unless said.
	Baseline string  `json:"baseline,omitempty"`
	Direct   float64 `json:"direct,omitempty"` // median over the repeats; 0 when there is no baseline
	Tunnel   float64 `json:"tunnel"`           // median over the repeats
	Ratio    float64 `json:"ratio,omitempty"`  // Tunnel / Direct
	Goal     *goal   `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
	// Probe is the probe's median, 0 when it did not run; ProbeRatio is
	// Tunnel / Probe.
	Probe      float64 `json:"probe,omitempty"`
	ProbeRatio float64 `json:"probeRatio,omitempty"`
	// DirectRuns, ProbeRuns and TunnelRuns are the figures of every repeat.
	DirectRuns []float64 `json:"directRuns,omitempty"`
	ProbeRuns  []float64 `json:"probeRuns,omitempty"`
	TunnelRuns []float64 `json:"tunnelRuns,omitempty"`
	// Extra holds details that do not fit the columns (counts, per-process
	// memory).
	Extra map[string]float64 `json:"extra,omitempty"`
}

// newFigure fills medians, the ratio and whether the goal is met.
func newFigure(test, cas, unit string, direct, tunnel []float64, g *goal) figure {
	f := figure{Test: test, Case: cas, Unit: unit, DirectRuns: direct, TunnelRuns: tunnel, Goal: g}
	f.Direct, f.Tunnel = median(direct), median(tunnel)
	if len(direct) > 0 && f.Direct > 0 {
		f.Ratio = f.Tunnel / f.Direct
		f.Baseline = "direct TCP"
	}
	if g != nil && (!g.OnRatio || f.Ratio > 0) {
		v := f.Tunnel
		if g.OnRatio {
			v = f.Ratio
		}
		met := v <= g.Value
		if g.AtLeast {
			met = v >= g.Value
		}
		f.Met = &met
	}
	return f
}

// withProbe adds the probe's runs as a second baseline; the goal stays
// on the ratio to the first.
func (f figure) withProbe(probe []float64) figure {
	if len(probe) == 0 {
		return f
	}
	f.ProbeRuns, f.Probe = probe, median(probe)
	if f.Probe > 0 {
		f.ProbeRatio = f.Tunnel / f.Probe
	}
	return f
}

// report is everything a run found, as --json writes it.
type report struct {
	Tool     string    `json:"tool"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Machine  machine   `json:"machine"`
	Settings settings  `json:"settings"`
	Tests    []string  `json:"tests"`
	Figures  []figure  `json:"figures"`
}

// settings records how the run was configured.
type settings struct {
	Mode        string  `json:"mode"` // local, uds or frontend
	Frontend    string  `json:"frontend"`
	Target      string  `json:"target"`
	Dest        string  `json:"connectTo"`
	Direct      bool    `json:"direct"`
	Probe       bool    `json:"probe"`
	PinCPU      int     `json:"pinCPU"`
	DurationSec float64 `json:"durationSeconds"`
	Repeat      int     `json:"repeat"`
	Streams     int     `json:"streams"`
	Concurrency int     `json:"concurrency"`
	Idle        int     `json:"idle"`
	Fleet       int     `json:"fleet"`
	Quick       bool    `json:"quick"`
	Seed        uint64  `json:"seed"`
	NoFile      uint64  `json:"nofile"`
	ServerPID   int     `json:"serverPID,omitempty"`
	AgentPID    int     `json:"agentPID,omitempty"`
}

// printTable writes the figures as an aligned table.
func printTable(w io.Writer, figs []figure) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "test\tcase\tdirect\tprobe\ttunnel\ttunnel/direct\ttunnel/probe\ttarget\tmet")
	for _, f := range figs {
		met := ""
		if f.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*f.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Test, f.Case,
			orDash(f.Direct, f.Unit), orDash(f.Probe, f.Unit), formatValue(f.Tunnel, f.Unit),
			ratioText(f.Ratio), ratioText(f.ProbeRatio), f.Goal.text(f.Unit), met)
	}
	tw.Flush()
}

// orDash is formatValue, or "-" for a baseline that was not measured.
func orDash(v float64, unit string) string {
	if v <= 0 {
		return "-"
	}
	return formatValue(v, unit)
}

func ratioText(r float64) string {
	if r <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", r)
}

// formatValue prints v with three significant digits or so, and its unit.
func formatValue(v float64, unit string) string {
	var s string
	switch a := math.Abs(v); {
	case a >= 100:
		s = fmt.Sprintf("%.0f", v)
	case a >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.2f", v)
	}
	return s + " " + unit
}

// writeJSON writes r to file.
func writeJSON(file string, r *report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}
