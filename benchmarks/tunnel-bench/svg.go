package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"os"
)

// The chart: one horizontal bar per figure that has a ratio, on a log
// scale around 1× (the baseline), green where the target is met, red
// where it is not, grey where there is none; a black tick marks the
// target. Below each, a blue bar is the tunnel's ratio to the probe, where
// the probe ran.

const (
	svgWidth  = 1100
	svgLabelW = 530 // left column of case names
	svgPlotW  = 480
	svgRowH   = 22
	svgTop    = 56
	svgBottom = 40
)

// svgTicks are the labelled ratios of the axis.
var svgTicks = []float64{0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100}

// writeSVG renders the ratios of r to file.
func writeSVG(file string, r *report) error {
	if err := os.WriteFile(file, renderSVG(r), 0o644); err != nil {
		return fmt.Errorf("--svg: %w", err)
	}
	return nil
}

// svgProbeColour is the bars of the ratios to the probe.
const svgProbeColour = "#4a78c0"

// bar is one row of the chart.
type bar struct {
	label  string
	ratio  float64
	colour string
	goal   *goal // drawn as a tick where it bounds the ratio
}

// bars lists the rows: each figure's ratio to its baseline, then its
// ratio to the probe.
func bars(figs []figure) []bar {
	var rows []bar
	for _, f := range figs {
		if f.Ratio > 0 {
			rows = append(rows, bar{f.Test + ": " + f.Case, f.Ratio, barColour(f), f.Goal})
		}
		if f.ProbeRatio > 0 {
			rows = append(rows, bar{f.Test + ": " + f.Case + " ÷ probe", f.ProbeRatio, svgProbeColour, nil})
		}
	}
	return rows
}

func renderSVG(r *report) []byte {
	rows := bars(r.Figures)
	lo, hi := ratioRange(rows)
	x := func(v float64) float64 {
		return svgLabelW + svgPlotW*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	h := svgTop + len(rows)*svgRowH + svgBottom
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", svgWidth, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("tunnel-bench: tunnel ÷ baseline (log scale; right is larger) — %s, %d CPUs, %s, %s",
		r.Machine.CPUModel, r.Machine.NumCPU, r.Machine.GoVersion, r.Started.Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", esc(title))
	fmt.Fprintf(&b, `<text x="10" y="38" fill="#555">green: target met · red: not met · grey: no target · black tick: the target · blue: ÷ probe (TLS 1.3 relay, no multiplexer) · commit %s</text>`+"\n", esc(short(r.Machine.Commit)))
	axisY := svgTop + len(rows)*svgRowH
	for _, t := range svgTicks {
		if t < lo || t > hi {
			continue
		}
		stroke := "#ddd"
		if t == 1 {
			stroke = "#888"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", x(t), svgTop-4, x(t), axisY, stroke)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s×</text>`+"\n", x(t), axisY+16, trim(t))
	}
	for i, f := range rows {
		y := svgTop + i*svgRowH
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", svgLabelW-8, y+15, esc(f.label))
		x0, x1 := x(1), x(f.ratio)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", math.Min(x0, x1), y+4, math.Abs(x1-x0)+1, svgRowH-8, f.colour)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%.2f×</text>`+"\n", svgLabelW+svgPlotW+8, y+15, f.ratio)
		if f.goal != nil && f.goal.OnRatio && f.goal.Value >= lo && f.goal.Value <= hi {
			gx := x(f.goal.Value)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black" stroke-width="2"/>`+"\n", gx, y+1, gx, y+svgRowH-1)
		}
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// ratioRange is the axis: a decade-aligned span holding 1×, every ratio
// and every target.
func ratioRange(rows []bar) (lo, hi float64) {
	lo, hi = 0.1, 10
	for _, f := range rows {
		lo, hi = math.Min(lo, f.ratio), math.Max(hi, f.ratio)
		if f.goal != nil && f.goal.OnRatio {
			lo, hi = math.Min(lo, f.goal.Value), math.Max(hi, f.goal.Value)
		}
	}
	return math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
}

func barColour(f figure) string {
	switch {
	case f.Met == nil:
		return "#999"
	case *f.Met:
		return "#3a9a4a"
	default:
		return "#d04040"
	}
}

func esc(s string) string { return html.EscapeString(s) }

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	if commit == "" {
		return "unknown"
	}
	return commit
}
