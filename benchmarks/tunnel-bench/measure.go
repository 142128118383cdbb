package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-project/tunnel/benchmarks"
)

// The measurements, each on one Dialer: the tunnel or the direct baseline.
// Connections are opened before the clock starts; every byte is verified.

// rttWarmup round trips precede every latency measurement, unrecorded.
const rttWarmup = 100

// minRTTSamples is the fewest round trips one latency measurement takes,
// however long they take.
const minRTTSamples = 100

// maxRTTSamples bounds one latency measurement's memory.
const maxRTTSamples = 2_000_000

// msgLen is the size of an echo: a round trip and a dial both carry one.
const msgLen = 64

// transfer is the outcome of a throughput measurement.
type transfer struct {
	bytes   int64
	elapsed time.Duration
}

// mbps returns the rate in MB/s (10^6 bytes a second).
func (t transfer) mbps() float64 { return float64(t.bytes) / 1e6 / t.elapsed.Seconds() }

// openAll opens n connections in mode h, closing them all if one fails.
func openAll(ctx context.Context, d benchmarks.Dialer, h benchmarks.Header, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := benchmarks.Open(ctx, d, h, nil)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// measureUpload sends the pattern stream on streams sink connections for
// dur; the target verifies every byte and confirms the count.
func measureUpload(ctx context.Context, d benchmarks.Dialer, p *benchmarks.Pattern, seed uint64, streams int, dur time.Duration) (transfer, error) {
	h := benchmarks.Header{Mode: benchmarks.ModeSink, Seed: seed}
	return measureStreams(ctx, d, h, streams, dur, func(c net.Conn, until time.Time) (int64, error) {
		return benchmarks.Upload(c, p, benchmarks.ChunkSize, until)
	})
}

// measureDownload reads and verifies the pattern stream from streams
// source connections for dur.
func measureDownload(ctx context.Context, d benchmarks.Dialer, p *benchmarks.Pattern, seed uint64, streams int, dur time.Duration) (transfer, error) {
	h := benchmarks.Header{Mode: benchmarks.ModeSource, Seed: seed, Length: benchmarks.Unlimited}
	return measureStreams(ctx, d, h, streams, dur, func(c net.Conn, until time.Time) (int64, error) {
		return benchmarks.Download(c, p, make([]byte, benchmarks.ChunkSize), until)
	})
}

// measureStreams opens streams connections with header h and runs move on
// each until dur has passed, counting the bytes moved.
func measureStreams(ctx context.Context, d benchmarks.Dialer, h benchmarks.Header, streams int, dur time.Duration, move func(c net.Conn, until time.Time) (int64, error)) (transfer, error) {
	conns, err := openAll(ctx, d, h, streams)
	if err != nil {
		return transfer{}, err
	}
	defer closeAll(conns)
	var total atomic.Int64
	start := time.Now()
	until := start.Add(dur)
	err = parallel(streams, func(i int) error {
		n, err := move(conns[i], until)
		total.Add(n)
		return err
	})
	return transfer{bytes: total.Load(), elapsed: time.Since(start)}, err
}

// measureRTT runs 64-byte round trips on an echo connection for dur and
// returns each one's time. Every echo carries its sequence number, so a
// stale or misrouted answer is a mismatch.
func measureRTT(c net.Conn, seq *uint64, dur time.Duration) ([]time.Duration, error) {
	msg, buf := make([]byte, msgLen), make([]byte, msgLen)
	rtt := func() (time.Duration, error) {
		*seq++
		binary.BigEndian.PutUint64(msg, *seq)
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, fmt.Errorf("round trip %d: write: %w", *seq, err)
		}
		err := benchmarks.ReadEcho(c, msg, buf)
		return time.Since(start), err
	}
	defer c.SetDeadline(time.Time{})
	c.SetDeadline(time.Now().Add(benchmarks.IOGrace))
	for range rttWarmup {
		if _, err := rtt(); err != nil {
			return nil, err
		}
	}
	// The clock starts after the warm-up, which on a busy machine can take
	// longer than a short run (--quick) lasts; and a run takes at least
	// minRTTSamples, so that its percentiles are measured, never empty.
	end := time.Now().Add(dur)
	c.SetDeadline(end.Add(benchmarks.IOGrace))
	var samples []time.Duration
	for len(samples) < maxRTTSamples && (len(samples) < minRTTSamples || time.Now().Before(end)) {
		d, err := rtt()
		if err != nil {
			return nil, err
		}
		samples = append(samples, d)
	}
	return samples, nil
}

// openEcho opens an echo connection and checks one round trip on it.
func openEcho(ctx context.Context, d benchmarks.Dialer, id uint64) (net.Conn, error) {
	msg := echoMsg(id)
	c, err := benchmarks.Open(ctx, d, benchmarks.Header{Mode: benchmarks.ModeEcho}, msg)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(benchmarks.IOGrace))
	if err := benchmarks.ReadEcho(c, msg, make([]byte, msgLen)); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// echoMsg is a 64-byte message unique to id.
func echoMsg(id uint64) []byte {
	msg := make([]byte, msgLen)
	for i := 0; i < msgLen; i += 8 {
		binary.BigEndian.PutUint64(msg[i:], id^uint64(i)<<56)
	}
	return msg
}

// measureDialRate runs concurrency dialers for dur, each opening a
// connection, checking one 64-byte echo and closing, and counts the
// completed ones.
func measureDialRate(ctx context.Context, d benchmarks.Dialer, concurrency int, dur time.Duration) (float64, int64, error) {
	var done atomic.Int64
	start := time.Now()
	end := start.Add(dur)
	err := parallel(concurrency, func(w int) error {
		for i := uint64(0); time.Now().Before(end); i++ {
			c, err := openEcho(ctx, d, uint64(w)<<32|i)
			if err != nil {
				return fmt.Errorf("after %d dials: %w", done.Load(), err)
			}
			c.Close()
			done.Add(1)
		}
		return nil
	})
	n := done.Load()
	return float64(n) / time.Since(start).Seconds(), n, err
}

// parallel runs f(0) … f(n-1) at once and returns the first error.
func parallel(n int, f func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// forEach runs f over 0 … n-1 with workers goroutines, stopping at the
// first error.
func forEach(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var failed atomic.Bool
	return parallel(min(workers, n), func(int) error {
		for !failed.Load() {
			i := int(next.Add(1) - 1)
			if i >= n {
				return nil
			}
			if err := f(i); err != nil {
				failed.Store(true)
				return err
			}
		}
		return nil
	})
}
