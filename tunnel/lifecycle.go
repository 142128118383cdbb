package tunnel

import (
	"maps"
	"net"
	"slices"
	"sync"
)

// What the server owns, and how Close ends it (STYLE.md, habit 4). Every
// listener, agent session and frontend connection is in s.open with the
// function that closes it; every goroutine the server starts is counted in
// s.wg. Both are added under s.mu, checking s.closed, so nothing is added
// after Close has begun. No I/O runs under s.mu: a close may write (a TLS
// close_notify, a session's go-away) to a peer that never reads.

// Close stops every listener, ends every agent session and frontend
// connection, and waits for the goroutines the server started. The closes
// run all at once, outside the server's lock: one that waits on a peer
// that never reads holds up neither the others nor a goroutine that is
// finishing.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.cancel()
	closes := slices.Collect(maps.Values(s.open))
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, closeFn := range closes {
		wg.Go(func() { closeFn() })
	}
	wg.Wait()
	s.wg.Wait()
	s.workers.close()
	return nil
}

// track registers closeFn to run at Close; it reports false (and runs
// closeFn) if the server is already closed.
func (s *Server) track(key any, closeFn func() error) bool {
	return s.hold(key, closeFn, false)
}

// enroll is track for work its caller then does in a goroutine that Close
// must wait for (goConn, ServeFrontend): it also counts that goroutine in
// s.wg, under the lock Close takes, so that none starts after Close has
// returned. When the work ends, the goroutine calls untrack(key) and then
// s.wg.Done.
func (s *Server) enroll(key any, closeFn func() error) bool {
	return s.hold(key, closeFn, true)
}

func (s *Server) hold(key any, closeFn func() error, count bool) bool {
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.open[key] = closeFn
		if count {
			s.wg.Add(1)
		}
	}
	s.mu.Unlock()
	if closed {
		closeFn()
	}
	return !closed
}

func (s *Server) untrack(key any) {
	s.mu.Lock()
	delete(s.open, key)
	s.mu.Unlock()
}

// spawn runs f in a goroutine that Close waits for, unless the server has
// closed.
func (s *Server) spawn(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// goConn runs f in a goroutine that Close waits for, with c closed at
// Close; it reports false, and closes c, if the server has closed. The work
// ends when f returns, and then gives c's place back (leave, if not nil) —
// unless f called keep: then it ends when the function keep returned is
// called, from anywhere. A tunnel so outlives the goroutine that opened it
// and needs none of its own while idle (copy.go, startPipe).
func (s *Server) goConn(c net.Conn, leave func(), f func(keep func() (end func()))) bool {
	if !s.enroll(c, c.Close) {
		return false
	}
	end := func() {
		if leave != nil {
			leave()
		}
		s.untrack(c)
		s.wg.Done()
	}
	s.workers.spawn(func() {
		kept := false
		f(func() func() { kept = true; return end })
		if !kept {
			end()
		}
	})
	return true
}
