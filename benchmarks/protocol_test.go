package benchmarks

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestModes runs every target mode over every path and checks the bytes.
func TestModes(t *testing.T) {
	for _, p := range env(t).paths() {
		t.Run(p.name, func(t *testing.T) {
			p.skipIfCannot(t)
			const n = 3*Period + 12345 // wraps the pattern block
			up := open(t, p.d, Header{Mode: ModeSink, Seed: 7})
			if sent, err := UploadN(up, NewPattern(7), ChunkSize, n); err != nil || sent != n {
				t.Fatalf("upload: sent %d, err %v", sent, err)
			}
			down := open(t, p.d, Header{Mode: ModeSource, Seed: 8, Length: n})
			if err := DownloadN(down, NewPattern(8), make([]byte, 100_000), n); err != nil {
				t.Fatalf("download: %v", err)
			}
			echo := open(t, p.d, Header{Mode: ModeEcho})
			if err := Echo(echo, []byte(strings.Repeat("x", 5000)), make([]byte, 5000), 10*time.Second); err != nil {
				t.Fatalf("echo: %v", err)
			}
			timed := open(t, p.d, Header{Mode: ModeSource, Seed: 9, Length: Unlimited})
			if got, err := Download(timed, NewPattern(9), make([]byte, 64<<10), time.Now().Add(50*time.Millisecond)); err != nil || got == 0 {
				t.Fatalf("timed download: %d bytes, err %v", got, err)
			}
		})
	}
}

// TestSinkCatchesCorruption sends the wrong stream to a sink.
func TestSinkCatchesCorruption(t *testing.T) {
	e := env(t)
	before := e.target.Failures()
	c := open(t, e.direct, Header{Mode: ModeSink, Seed: 1})
	_, err := UploadN(c, NewPattern(2), 1000, 5000)
	var me *MismatchError
	if !errors.As(err, &me) || me.Offset != 0 {
		t.Fatalf("upload of the wrong stream: err %v, want a mismatch at 0", err)
	}
	if e.target.Failures() != before+1 {
		t.Errorf("target counted %d failures, want %d", e.target.Failures(), before+1)
	}
}

// TestVerifierCatchesLostChunk drops one power-of-two chunk from a stream.
func TestVerifierCatchesLostChunk(t *testing.T) {
	p := NewPattern(3)
	v := NewVerifier(p)
	const chunk = 64 << 10
	for off := int64(0); off < 2*Period; off += chunk {
		if off == 8*chunk {
			continue // lost on the way
		}
		if err := v.Check(p.At(off, chunk)); err != nil {
			if !isMismatch(err) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
	}
	t.Fatal("a lost chunk went unnoticed")
}

// TestConnectRefusal checks that a CONNECT with no route is a *ConnectError
// carrying the server's status line.
func TestConnectRefusal(t *testing.T) {
	d := env(t).tunnel
	d.Dest = "10.255.255.1:9"
	_, err := d.Dial(context.Background())
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Status != 502 || !strings.Contains(ce.StatusLine, "no agent") {
		t.Fatalf("CONNECT without an agent: %v, want a 502 no agent", err)
	}
}

// TestConnectKeepsEarlyBytes has a frontend that sends tunneled bytes in the
// same write as its 200; none may be lost.
func TestConnectKeepsEarlyBytes(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		buf := make([]byte, 512)
		server.Read(buf)
		server.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\nearly"))
	}()
	c, err := Connect(context.Background(), client, "x:1")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	if string(got) != "early" {
		t.Fatalf("read %q after the header, want %q", got, "early")
	}
}
