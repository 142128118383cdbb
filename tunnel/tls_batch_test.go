package tunnel

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// TestReadAhead sends bursts and trickles over a real loopback connection
// and reads them through readAhead with buffers of the sizes TLS uses:
// every byte must arrive in order, bursts must be read ahead, and no
// pooled buffer may stay pinned once its bytes are taken.
func TestReadAhead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, server := connPair(t, ln)

	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	go func() {
		rest := data
		for len(rest) > 0 {
			n := min(len(rest), []int{5, 300, 16 << 10, 1 << 20}[rand.N(4)])
			client.Write(rest[:n])
			rest = rest[n:]
		}
		client.(*net.TCPConn).CloseWrite()
	}()

	var ra readAhead
	var got bytes.Buffer
	aheads := 0
	for {
		p := make([]byte, []int{5, 512, 16 << 10}[rand.N(3)])
		n, err := ra.Read(server, p)
		got.Write(p[:n])
		if ra.bp != nil {
			aheads++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("read %d bytes, not the %d sent in order", got.Len(), len(data))
	}
	if aheads == 0 {
		t.Error("no read went ahead into a pooled buffer during 1 MiB bursts")
	}
	if ra.bp != nil {
		t.Error("a pooled buffer is still pinned after every byte was read")
	}
}

// writeSizes records the length of each Write to the connection under it.
type writeSizes struct {
	net.Conn
	sizes []int
}

func (w *writeSizes) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Conn.Write(p)
}

// TestBatchLimit writes ten full TLS records in one batch, as TLS does for
// a session Write of four 64 KiB frames and more: they leave in system
// calls of four records, the rest at the batch's end, every byte in order.
func TestBatchLimit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, server := connPair(t, ln)
	rec := &writeSizes{Conn: client}
	b := &batchConn{Conn: rec}

	const record = 16<<10 + 22 // a full TLS 1.3 record: header, body, content type, tag
	data := make([]byte, 10*record)
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(server)
		got <- all
	}()
	b.begin()
	for rest := data; len(rest) > 0; rest = rest[record:] {
		if _, err := b.Write(rest[:record]); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.end(); err != nil {
		t.Fatal(err)
	}
	client.(*net.TCPConn).CloseWrite()
	if !bytes.Equal(<-got, data) {
		t.Fatal("the bytes did not arrive as written")
	}
	if want := []int{4 * record, 4 * record, 2 * record}; fmt.Sprint(rec.sizes) != fmt.Sprint(want) {
		t.Fatalf("system calls of %v bytes; want %v", rec.sizes, want)
	}
	if b.buf != nil {
		t.Fatal("the batch buffer stays pinned after the batch")
	}
}

// discardWrites is a connection whose writes succeed and go nowhere.
type discardWrites struct{ net.Conn }

func (discardWrites) Write(p []byte) (int, error) { return len(p), nil }

// TestBatchBuffersReturn checks that a batch hands its buffer back to the
// pool at its end, also when its last bytes left at the limit inside Write,
// and that a batch allocates nothing once the pool holds a buffer (not
// checked under the race detector, whose pools drop buffers on purpose).
func TestBatchBuffersReturn(t *testing.T) {
	b := &batchConn{Conn: discardWrites{}}
	rec := make([]byte, batchLimit/4)
	batch := func(records int) {
		b.begin()
		for range records {
			if _, err := b.Write(rec); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.end(); err != nil {
			t.Fatal(err)
		}
	}
	for _, records := range []int{1, 4, 9} { // 4: the limit is reached in Write, and the end has nothing left
		batch(records)
		if b.buf != nil {
			t.Fatalf("a batch of %d records kept its buffer after its end", records)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { batch(1) }); allocs != 0 && !raceEnabled {
		t.Fatalf("a batch allocates %.1f times; want none", allocs)
	}
}
