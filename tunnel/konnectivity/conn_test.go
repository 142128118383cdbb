package konnectivity

import (
	"errors"
	"os"
	"testing"
	"time"
)

// TestConnReadDeadline: a read deadline in the past wakes a waiting Read
// with os.ErrDeadlineExceeded and consumes nothing, so that the server can
// pause a gRPC tunnel to move it; once cleared, the next DATA is read.
func TestConnReadDeadline(t *testing.T) {
	c := &conn{ps: &proxyStream{data: make(chan []byte)}, closed: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read wait
	c.SetReadDeadline(time.Unix(1, 0))
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read after a past deadline: %v, want os.ErrDeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a past deadline did not wake Read")
	}
	c.SetReadDeadline(time.Time{})
	go func() { c.ps.data <- []byte("hello") }()
	buf := make([]byte, 8)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read after clearing the deadline: %q, %v", buf[:n], err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past a future deadline: %v", err)
	}
}
