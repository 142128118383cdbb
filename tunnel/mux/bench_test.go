package mux

import (
	"context"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	hashicorp "github.com/hashicorp/yamux"
)

// The benchmarks compare this package with hashicorp/yamux v0.1.2 and with
// the bare connection ("direct"), over TCP and TLS 1.3 loopback, in one run.

// benchStreams makes one connected pair of byte streams of the given kind
// over a fresh connection pair.
type benchKind struct {
	name string
	pair func(b *testing.B, ca, cb net.Conn) (x, y net.Conn)
}

var benchKinds = []benchKind{
	{"direct", func(b *testing.B, ca, cb net.Conn) (net.Conn, net.Conn) { return ca, cb }},
	{"mux", benchMux},
	{"hashicorp", benchHashicorp},
}

func benchMux(b *testing.B, ca, cb net.Conn) (net.Conn, net.Conn) {
	c, s := sessionsOn(b, ca, cb, nil, nil)
	x, y := openAccept(b, c, s)
	return x, y
}

func benchHashicorp(b *testing.B, ca, cb net.Conn) (net.Conn, net.Conn) {
	cfg := hashicorp.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	cfg.MaxStreamWindowSize = 1 << 20 // as the tunnel runs it
	c, err := hashicorp.Client(ca, cfg)
	if err != nil {
		b.Fatal(err)
	}
	s, err := hashicorp.Server(cb, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	x, err := c.OpenStream()
	if err != nil {
		b.Fatal(err)
	}
	y, err := s.AcceptStream()
	if err != nil {
		b.Fatal(err)
	}
	return x, y
}

// benchTransports are the connections benchmarked: TCP and TLS loopback.
var benchTransports = []transport{transports[1], transports[2]}

func forEachBench(b *testing.B, f func(b *testing.B, x, y net.Conn)) {
	for _, tr := range benchTransports {
		for _, k := range benchKinds {
			b.Run(k.name+"/"+tr.name, func(b *testing.B) {
				ca, cb := tr.pair(b)
				b.Cleanup(func() { ca.Close(); cb.Close() })
				x, y := k.pair(b, ca, cb)
				cpu := cpuTime()
				f(b, x, y)
				reportCPU(b, cpu)
			})
		}
	}
}

// BenchmarkRoundTrip sends 64 bytes and waits for them to come back, over
// one stream.
func BenchmarkRoundTrip(b *testing.B) {
	forEachBench(b, func(b *testing.B, x, y net.Conn) {
		go func() {
			buf := make([]byte, 64)
			for {
				if _, err := io.ReadFull(y, buf); err != nil {
					return
				}
				if _, err := y.Write(buf); err != nil {
					return
				}
			}
		}()
		buf := make([]byte, 64)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := x.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(x, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkThroughput writes size-byte chunks on one stream as fast as the
// reader at the other end takes them.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			forEachBench(b, func(b *testing.B, x, y net.Conn) {
				done := make(chan int64, 1)
				go func() {
					n, _ := io.CopyBuffer(io.Discard, y, make([]byte, 64<<10))
					done <- n
				}()
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if _, err := x.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				closeWrite(x)
				if n := <-done; n != int64(size)*int64(b.N) {
					b.Fatalf("received %d bytes; want %d", n, size*b.N)
				}
			})
		})
	}
}

// BenchmarkParallelStreams writes 16 KiB chunks on 4×GOMAXPROCS streams of
// one session at once, which exercises write coalescing.
func BenchmarkParallelStreams(b *testing.B) {
	const size = 16 << 10
	for _, tr := range benchTransports {
		for _, k := range []string{"mux", "hashicorp"} {
			b.Run(k+"/"+tr.name, func(b *testing.B) {
				ca, cb := tr.pair(b)
				open, accept := benchSessions(b, k, ca, cb)
				go func() {
					for {
						st, err := accept()
						if err != nil {
							return
						}
						go io.CopyBuffer(io.Discard, st, make([]byte, 64<<10))
					}
				}()
				b.SetBytes(size)
				b.ReportAllocs()
				b.SetParallelism(4)
				defer reportCPU(b, cpuTime())
				b.RunParallel(func(pb *testing.PB) {
					st, err := open()
					if err != nil {
						b.Error(err)
						return
					}
					buf := make([]byte, size)
					for pb.Next() {
						if _, err := st.Write(buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// benchSessions starts a session pair of kind "mux" or "hashicorp" and
// returns its client's open and its server's accept.
func benchSessions(b *testing.B, kind string, ca, cb net.Conn) (open, accept func() (net.Conn, error)) {
	if kind == "mux" {
		c, _ := Client(ca, nil)
		s, _ := Server(cb, nil)
		b.Cleanup(func() { c.Close(); s.Close() })
		open = func() (net.Conn, error) { return c.Open(context.Background()) }
		accept = func() (net.Conn, error) { return s.Accept(context.Background()) }
		return open, accept
	}
	cfg := hashicorp.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.MaxStreamWindowSize = 1 << 20
	c, _ := hashicorp.Client(ca, cfg)
	s, _ := hashicorp.Server(cb, cfg)
	b.Cleanup(func() { c.Close(); s.Close() })
	open = func() (net.Conn, error) { return c.OpenStream() }
	accept = func() (net.Conn, error) { return s.AcceptStream() }
	return open, accept
}

// cpuTime returns the CPU time (user and system) the process has used. On a
// shared machine it varies less than wall time, so the benchmarks report it
// per operation as cpu-ns/op: both ends run in this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	if start > 0 && b.N > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case interface{ CloseWrite() error }:
		c.CloseWrite()
	default:
		c.Close() // a hashicorp stream's Close is a half-close
	}
}
