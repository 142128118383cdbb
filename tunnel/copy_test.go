package tunnel

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
)

// scriptedReader returns the reads of its script in order, each as one
// Read, then EOF, and counts the Shrink calls the copy path makes.
type scriptedReader struct {
	data    []byte
	reads   []int
	maxBuf  int
	shrinks int
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	if len(r.reads) == 0 {
		return 0, io.EOF
	}
	r.maxBuf = max(r.maxBuf, len(p))
	n := min(r.reads[0], len(p))
	if n == r.reads[0] {
		r.reads = r.reads[1:]
	} else {
		r.reads[0] -= n
	}
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func (r *scriptedReader) Shrink() { r.shrinks++ }

type byteCount struct{ n atomic.Int64 }

func (c *byteCount) Add(v float64) { c.n.Add(int64(v)) }

// TestCopyAdaptive checks that every byte arrives in order while reads move
// between the small and the large buffer, that bulk reads get the large
// buffer, and that quiet reads release the stream's receive buffer.
func TestCopyAdaptive(t *testing.T) {
	reads := []int{1, 64, smallBufSize, largeBufSize, largeBufSize, 5, smallBufSize - 1, 3 * largeBufSize, 7}
	total := 0
	for _, n := range reads {
		total += n
	}
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	src := &scriptedReader{data: data, reads: reads}
	var dst bytes.Buffer
	var count byteCount
	n, err := copyAdaptive(&dst, src, &count)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(total) || count.n.Load() != int64(total) || !bytes.Equal(dst.Bytes(), data) {
		t.Fatalf("copied %d (counted %d) of %d bytes; equal=%v", n, count.n.Load(), total, bytes.Equal(dst.Bytes(), data))
	}
	if src.maxBuf != largeBufSize {
		t.Errorf("largest read buffer %d, want %d during bulk reads", src.maxBuf, largeBufSize)
	}
	// Reads of 1, 64, 5, smallBufSize-1 and 7 bytes are quiet moments.
	if src.shrinks != 5 {
		t.Errorf("%d Shrink calls, want 5 (one per quiet read)", src.shrinks)
	}
}

// BenchmarkPipe measures the copy path alone between two loopback TCP
// connections: a client writes, pipe relays, a sink reads.
func BenchmarkPipe(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	dial := func() (net.Conn, net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		return c, s
	}
	client, in := dial()
	out, sink := dial()
	go pipe(in, out, nil, nil)
	done := make(chan int64)
	go func() { n, _ := io.Copy(io.Discard, sink); done <- n }()

	chunk := make([]byte, 128<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	client.(*net.TCPConn).CloseWrite()
	if n := <-done; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("sink read %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	client.Close()
	sink.Close()
}
