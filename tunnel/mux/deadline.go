package mux

import (
	"sync"
	"time"
)

// deadline is one direction's deadline of a stream. Blocked calls select on
// wait(), which is closed when the deadline passes; moving the deadline
// keeps the same channel while it is open, so calls already blocked see the
// change. The channel is made on first use, so a stream whose calls never
// block, and that never sets a deadline, pays nothing.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // nil until first needed
	gen   uint64        // bumped by every set, so a stale timer does nothing
}

// set moves the deadline to t; the zero time removes it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.ch != nil && closed(d.ch) {
		d.ch = nil // the old deadline passed; start afresh
	}
	if t.IsZero() {
		return
	}
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.ch)
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(wait, func() { d.expire(gen) })
}

// expire closes the channel unless the deadline moved since the timer of
// generation gen started.
func (d *deadline) expire(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen == gen && !closed(d.ch) {
		close(d.ch)
	}
}

// wait returns a channel closed once the deadline has passed.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// passed reports whether the deadline has passed.
func (d *deadline) passed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch != nil && closed(d.ch)
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
