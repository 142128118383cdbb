package main

import (
	"math"
	"slices"
	"time"
)

// median returns the middle value of xs (the mean of the two middle ones
// for an even count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentiles holds the round-trip figures of one measurement.
type percentiles struct {
	N             int
	P50, P90, P99 time.Duration
}

// percentilesOf sorts ds in place and reads the nearest-rank percentiles.
func percentilesOf(ds []time.Duration) percentiles {
	slices.Sort(ds)
	rank := func(q float64) time.Duration {
		if len(ds) == 0 {
			return 0
		}
		i := int(math.Ceil(q*float64(len(ds)))) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return percentiles{N: len(ds), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99)}
}

// micros converts a duration to microseconds, the unit latencies print in.
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
