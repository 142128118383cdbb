package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFrontendRates measures, in one run on one machine, tunnels per second
// and MB/s through each frontend with kube-apiserver's real egress client,
// next to direct TCP. In `make test` (race detector, short) it is a smoke
// test of the measuring code; for figures:
//
//	cd e2e && go test -run TestFrontendRates -v . -rates-duration 5s -rates-bytes 268435456
var (
	ratesDuration = flag.Duration("rates-duration", 300*time.Millisecond, "TestFrontendRates: how long dials are counted per path")
	ratesBytes    = flag.Int64("rates-bytes", 4<<20, "TestFrontendRates: bytes uploaded and downloaded per path")
)

// rateDialers are the concurrent dialers of the dial-rate measurement, as
// in tunnel-bench's dialrate.
const rateDialers = 8

func TestFrontendRates(t *testing.T) {
	tg := startTargets(t)
	tn := startTunnel(t, tg.echo)
	var d net.Dialer
	paths := []struct {
		name string
		dial dialFunc
	}{
		{"direct", d.DialContext},
		{"HTTPConnect-UDS", loadClusterDialer(t, writeEgressConfig(t, deployConfig(t, "http-connect-uds.yaml",
			"/etc/kubernetes/tunnel/tunnel.sock", tn.udsPath)))},
		{"GRPC-UDS", loadClusterDialer(t, writeEgressConfig(t, deployConfig(t, "grpc-uds.yaml",
			"/etc/kubernetes/tunnel/grpc.sock", tn.grpcUDSPath)))},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "%-16s %12s %12s %12s\n", "path", "tunnels/s", "upload MB/s", "download MB/s")
	for _, p := range paths {
		rate, err := dialRate(p.dial, tg.echo, *ratesDuration)
		if err != nil {
			t.Fatalf("%s: dial rate: %v", p.name, err)
		}
		up, err := timeTransfer(p.dial, tg.sink, *ratesBytes, upload)
		if err != nil {
			t.Fatalf("%s: upload: %v", p.name, err)
		}
		down, err := timeTransfer(p.dial, tg.source, *ratesBytes, download)
		if err != nil {
			t.Fatalf("%s: download: %v", p.name, err)
		}
		fmt.Fprintf(&report, "%-16s %12.0f %12.1f %12.1f\n", p.name, rate, up, down)
	}
	t.Logf("%d dialers for %v; %d MiB each way:\n%s", rateDialers, *ratesDuration, *ratesBytes>>20, report.String())
}

// dialRate runs rateDialers loops of dial, 64-byte echo, close for d and
// returns the completed tunnels per second. Any failure ends it.
func dialRate(dial dialFunc, echo string, d time.Duration) (float64, error) {
	var (
		n     atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	probe := bytes.Repeat([]byte("x"), 64)
	start := time.Now()
	stop := start.Add(d)
	for range rateDialers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := dialEchoClose(dial, echo, probe); err != nil {
					mu.Lock()
					first = cmpErr(first, err)
					mu.Unlock()
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds(), first
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func dialEchoClose(dial dialFunc, echo string, probe []byte) error {
	c, err := dialBounded(dial, echo, dialTimeout)
	if err != nil {
		return err
	}
	if _, err := c.Write(probe); err != nil {
		c.Close()
		return err
	}
	got := make([]byte, len(probe))
	if _, err := io.ReadFull(c, got); err != nil {
		c.Close()
		return err
	}
	if !bytes.Equal(got, probe) {
		c.Close()
		return errors.New("echo differs")
	}
	return c.Close()
}

// A transfer moves n bytes over c and checks them against the target's
// SHA-256.
type transfer func(c net.Conn, n int64) error

// timeTransfer runs one transfer through a new tunnel and returns MB/s.
func timeTransfer(dial dialFunc, addr string, n int64, move transfer) (float64, error) {
	c, err := dialBounded(dial, addr, dialTimeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := binary.Write(c, binary.BigEndian, uint64(n)); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := move(c, n); err != nil {
		return 0, err
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

// upload sends n bytes to the sink and compares its SHA-256.
func upload(c net.Conn, n int64) error {
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(randomReader(), n)); err != nil {
		return err
	}
	return checkSum(c, h.Sum(nil))
}

// download reads n bytes from the source and compares its SHA-256.
func download(c net.Conn, n int64) error {
	h := sha256.New()
	if _, err := io.CopyN(h, c, n); err != nil {
		return err
	}
	return checkSum(c, h.Sum(nil))
}

func checkSum(c net.Conn, want []byte) error {
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the target's SHA-256: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("SHA-256 %x at one end, %x at the other", got, want)
	}
	return nil
}

// randomReader returns a fast pseudorandom stream.
func randomReader() io.Reader { return rand.NewChaCha8(randomSeed()) }
