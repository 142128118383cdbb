//go:build linux

package kubernetes

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// apiserverMetrics returns kube-apiserver's /metrics text.
func (c *cluster) apiserverMetrics(t *testing.T) string {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	body, err := c.client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("kube-apiserver /metrics: %v", err)
	}
	return string(body)
}

// histogram is one Prometheus histogram's cumulative buckets, summed over
// the series that matched.
type histogram struct {
	bounds []float64 // upper bounds, ascending; the last is +Inf
	counts []float64 // cumulative counts per bound
}

// parseHistogram sums the buckets of every series of name whose labels
// contain each of match.
func parseHistogram(text, name string, match ...string) histogram {
	sums := map[float64]float64{}
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"_bucket{") || !containsAll(line, match) {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		le := line[i+4:]
		le = le[:strings.IndexByte(le, '"')]
		bound, err1 := strconv.ParseFloat(le, 64)
		v, err2 := strconv.ParseFloat(line[j+1:], 64)
		if err1 == nil && err2 == nil {
			sums[bound] += v
		}
	}
	var h histogram
	for b := range sums {
		h.bounds = append(h.bounds, b)
	}
	sort.Float64s(h.bounds)
	for _, b := range h.bounds {
		h.counts = append(h.counts, sums[b])
	}
	return h
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// count is the number of observations.
func (h histogram) count() int {
	if len(h.counts) == 0 {
		return 0
	}
	return int(h.counts[len(h.counts)-1])
}

// quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linear interpolation inside the bucket that holds it.
func (h histogram) quantile(q float64) time.Duration {
	total := float64(h.count())
	if total == 0 {
		return 0
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(b, 1) {
				return time.Duration(lower * float64(time.Second))
			}
			frac := (rank - below) / math.Max(h.counts[i]-below, 1)
			return time.Duration((lower + (b-lower)*frac) * float64(time.Second)).Round(100 * time.Microsecond)
		}
		lower, below = b, h.counts[i]
	}
	return 0
}

// logEgressMetrics logs kube-apiserver's egress dialer series: how many
// dials went through the egress selector, and how many failed, by stage.
func logEgressMetrics(t *testing.T, text string) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "apiserver_egress_dialer_dial_failure_count") ||
			strings.HasPrefix(line, "apiserver_egress_dialer_dial_duration_seconds_count") {
			t.Logf("kube-apiserver: %s", line)
		}
	}
}
