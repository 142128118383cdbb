package tunnel

import (
	"bytes"
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
