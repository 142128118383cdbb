package benchmarks

import (
	"context"
	"net"
	"testing"
	"time"
)

// Benchmarks of the whole data path, in one process: CONNECT over a unix
// socket → server → TLS 1.3 + yamux → agent → TCP target, each beside the
// same work over a direct TCP connection to the same target ("direct").
// Every byte is verified. Compare the pairs with benchstat, or read the
// ratio off the MB/s columns:
//
//	go test -run '^$' -bench . ./benchmarks/
//
// Allocations are those of the whole process: client, server, agent and
// target together.

// writeSizes are the write sizes of the throughput benchmarks.
var writeSizes = []int{1 << 10, 16 << 10, 128 << 10, 1 << 20}

// BenchmarkUpload writes the pattern stream to a sink in writes of each
// size; the sink verifies it, and the timer runs until it confirms the last
// byte.
func BenchmarkUpload(b *testing.B) {
	e := env(b)
	for _, size := range writeSizes {
		for _, p := range e.paths() {
			b.Run(sizeName(size)+"/"+p.name, func(b *testing.B) { p.skipIfCannot(b); benchUpload(b, p.d, size) })
		}
	}
}

func benchUpload(b *testing.B, d Dialer, size int) {
	pat := NewPattern(uint64(size))
	c := open(b, d, Header{Mode: ModeSink, Seed: uint64(size)})
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	if _, err := UploadN(c, pat, size, int64(size)*int64(b.N)); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDownload reads the pattern stream from a source in reads of
// each size and verifies it.
func BenchmarkDownload(b *testing.B) {
	e := env(b)
	for _, size := range writeSizes {
		for _, p := range e.paths() {
			b.Run(sizeName(size)+"/"+p.name, func(b *testing.B) { p.skipIfCannot(b); benchDownload(b, p.d, size) })
		}
	}
}

func benchDownload(b *testing.B, d Dialer, size int) {
	pat := NewPattern(uint64(size) + 1)
	n := int64(size) * int64(b.N)
	c := open(b, d, Header{Mode: ModeSource, Seed: uint64(size) + 1, Length: n})
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	if err := DownloadN(c, pat, buf, n); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRoundTrip64 measures one 64-byte echo on an open connection.
func BenchmarkRoundTrip64(b *testing.B) {
	for _, p := range env(b).paths() {
		b.Run(p.name, func(b *testing.B) {
			p.skipIfCannot(b)
			c := open(b, p.d, Header{Mode: ModeEcho})
			msg, buf := make([]byte, 64), make([]byte, 64)
			c.SetDeadline(time.Now().Add(10 * time.Minute))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				msg[0], msg[1] = byte(i), byte(i>>8)
				c.Write(msg)
				if err := ReadEcho(c, msg, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDial measures a whole short-lived tunnel: dial (and CONNECT),
// one 64-byte echo, close.
func BenchmarkDial(b *testing.B) {
	for _, p := range env(b).paths() {
		b.Run(p.name, func(b *testing.B) {
			p.skipIfCannot(b)
			msg, buf := make([]byte, 64), make([]byte, 64)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				msg[0] = byte(i)
				if err := dialEcho(p.d, msg, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// dialEcho opens an echo connection carrying msg, checks the echo and
// closes.
func dialEcho(d Dialer, msg, buf []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultDialTimeout)
	defer cancel()
	c, err := Open(ctx, d, Header{Mode: ModeEcho}, msg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(IOGrace))
	return ReadEcho(c, msg, buf)
}

// open opens a connection in h's mode (with extra bytes after the header)
// and closes it when the benchmark ends.
func open(tb testing.TB, d Dialer, h Header, extra ...byte) net.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultDialTimeout)
	defer cancel()
	c, err := Open(ctx, d, h, extra)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
