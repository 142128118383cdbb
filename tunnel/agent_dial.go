package tunnel

import (
	"context"
	"errors"
	"net"
	"time"
)

// serveStream answers one dial request and then carries its bytes, as one
// of open's tunnels. It calls end once the stream is done with: at once
// after a failed dial, or when the tunnel has ended, which may be long
// after serveStream has returned (carry).
func (a *Agent) serveStream(ctx context.Context, s *agentSession, st net.Conn, end func()) {
	carried := false
	defer func() {
		if !carried {
			end()
		}
	}()
	st.SetReadDeadline(time.Now().Add(a.cfg.HandshakeTimeout))
	payload, err := readFrame(st, frameDialRequest)
	if err != nil {
		a.log.Warn("bad dial request", "err", err)
		st.Close()
		return
	}
	req, err := decodeDialRequest(payload)
	if err != nil {
		a.metrics.dials.inc(ResultError)
		a.respond(st, dialResponse{Result: ResultError, Message: err.Error()})
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	start := time.Now()
	target, err := a.dialWatched(ctx, st, req)
	a.metrics.dialTime.Observe(time.Since(start).Seconds())
	if err != nil {
		res := classifyDialError(err)
		a.metrics.dials.inc(res)
		if res == ResultForbidden {
			a.log.Warn("destination refused by policy", "dial", req.ID, "dest", req.Address, "err", err)
		} else {
			a.log.Info("dial failed", "dial", req.ID, "dest", req.Address, "result", res, "err", err)
		}
		a.respond(st, dialResponse{Result: res, Message: err.Error()})
		st.Close()
		return
	}
	a.metrics.dials.inc(ResultOK)
	if err := a.respond(st, dialResponse{Result: ResultOK}); err != nil {
		target.Close()
		st.Close()
		return
	}
	carried = true
	a.carry(s, st, target, req.ID, req.Address, end)
}

// carry carries an open tunnel, dial id to addr, as one of s's tunnels,
// and hands it to the agent's successor if it moves (move.go). It returns
// at once (startPipe) and calls done when the tunnel has ended.
func (a *Agent) carry(s *agentSession, st, target net.Conn, id uint64, addr string, done func()) {
	a.metrics.streamsOpen.Inc()
	var m *mover
	if _, ok := target.(*net.TCPConn); ok && s.moves && a.cfg.HandoffSocket != "" {
		m = newMover(target, st, true)
	}
	use, untrack := s.open.track(target, m, id, addr)
	startPipe(a.workers, st, target, useCounter{a.metrics.toNode, use, false}, useCounter{a.metrics.fromNode, use, true}, m, func(moved bool) {
		if m != nil {
			close(m.done)
		}
		switch {
		case moved:
			a.handOff(s, use, target) // handoff.go
		case m != nil && m.state.Load() == moveStopping:
			a.log.Info("tunnel ended while it moved", "dial", id, "dest", addr)
		}
		untrack()
		a.metrics.streamsOpen.Dec()
		done()
	})
}

// errServerGaveUp cancels a dial whose server stopped waiting for it.
var errServerGaveUp = errors.New("the server stopped waiting for this dial")

// dialWatched dials as dial does, and stops as soon as the server gives up
// on the dial — its caller went away (a gRPC DIAL_CLS, a canceled request)
// or its own timeout passed — which it shows by closing the stream before
// the answer. Nothing but the answer is sent before the answer, so a dial
// that runs longer than watchAfter has the stream watched for its end
// without reading (yamux streams; an SSH channel's dial runs to its own
// timeout).
func (a *Agent) dialWatched(ctx context.Context, st net.Conn, req dialRequest) (net.Conn, error) {
	wait := readWaiter(st)
	if wait == nil {
		return a.dial(ctx, req)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := lateWatch(func() {
		var ne net.Error
		if err := wait(); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			cancel(errServerGaveUp)
		}
	}, func() { st.SetReadDeadline(time.Unix(1, 0)) }) // ends the wait
	c, err := a.dial(ctx, req)
	stop()
	st.SetReadDeadline(time.Time{})
	if errors.Is(context.Cause(ctx), errServerGaveUp) {
		if c != nil {
			c.Close()
		}
		return nil, context.Cause(ctx)
	}
	return c, err
}

func (a *Agent) respond(st net.Conn, r dialResponse) error {
	_, err := st.Write(appendDialResponse(nil, r))
	return err
}

// dial connects to the requested destination on the node's network: to
// the addresses destinations resolves and the policy allows, first to last
// until one answers.
func (a *Agent) dial(ctx context.Context, req dialRequest) (net.Conn, error) {
	timeout := a.cfg.MaxDialTimeout
	if req.Timeout > 0 {
		timeout = min(timeout, req.Timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addrs, err := a.destinations(ctx, req.Address)
	if err != nil {
		return nil, err
	}
	var first error
	for _, ap := range addrs {
		c, err := a.dialAddr(ctx, ap.String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

func (a *Agent) dialAddr(ctx context.Context, addr string) (net.Conn, error) {
	if a.cfg.Dial != nil {
		return a.cfg.Dial(ctx, "tcp", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}
