package benchmarks

import (
	"errors"
	"net"
	"sync"
	"time"
)

// connServer is the accept loop and connection bookkeeping shared by the
// Target and the probe's relays: each connection is served in a goroutine it
// owns, and closeAll closes the listener and every connection it holds and
// waits for those goroutines. Its zero value with ln set is ready.
type connServer struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Addr returns the listener's address.
func (s *connServer) Addr() net.Addr { return s.ln.Addr() }

// serve accepts connections until closeAll and runs handle on each in a
// goroutine it owns; the connection is closed when handle returns.
// Temporary accept errors (out of descriptors) are retried.
func (s *connServer) serve(handle func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.trackGo(c) {
			return nil
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			handle(c)
		}()
	}
}

// closeAll stops the listener, closes every connection and waits for their
// goroutines.
func (s *connServer) closeAll() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// track adds c to the connections closeAll closes; after closeAll it closes
// c and returns false.
func (s *connServer) track(c net.Conn) bool { return s.add(c, false) }

// trackGo is track, counting a goroutine for c under the same lock, so that
// none starts after closeAll has begun waiting.
func (s *connServer) trackGo(c net.Conn) bool { return s.add(c, true) }

func (s *connServer) add(c net.Conn, goroutine bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[c] = struct{}{}
	if goroutine {
		s.wg.Add(1)
	}
	return true
}

func (s *connServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}
