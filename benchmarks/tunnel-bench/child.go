package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a child gets to exit after SIGTERM before SIGKILL,
// and then how long we wait for it to be reaped.
const stopGrace = 5 * time.Second

// maxLogBytes caps what a child's logBuffer keeps; older output is dropped.
const maxLogBytes = 32 << 20

// logBuffer collects a child's output and wakes waiters on every write.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

// Write implements io.Writer.
func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len()+len(p) > maxLogBytes {
		old := l.buf.Bytes()[l.buf.Len()/2:]
		l.buf = *bytes.NewBuffer(append([]byte(nil), old...))
	}
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// lines returns the complete lines so far and a channel closed on the next
// write.
func (l *logBuffer) lines() ([]string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	i := strings.LastIndexByte(s, '\n')
	if i < 0 {
		return nil, l.changed
	}
	return strings.Split(s[:i], "\n"), l.changed
}

// count returns how many complete lines contain every one of subs.
func (l *logBuffer) count(subs ...string) int {
	lines, _ := l.lines()
	n := 0
	for _, line := range lines {
		if containsAll(line, subs) {
			n++
		}
	}
	return n
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// tail returns the last n lines, for error reports.
func (l *logBuffer) tail(n int) string {
	lines, _ := l.lines()
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// child is a process the tool started: tunnel-server, tunnel-agent or the
// target.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed once the process has been reaped
	err  error         // exit status, valid after done
}

// startChild starts bin with args. The child dies with the tool
// (parent-death signal) and its output is kept for waitLine.
func startChild(name, bin string, args ...string) (*child, error) {
	c := &child{name: name, log: newLogBuffer(), done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = childAttr()
	c.cmd.WaitDelay = stopGrace
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// pid returns the child's process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// waitLine waits for an output line matching re and returns its
// submatches. It fails if the child exits first or ctx ends.
func (c *child) waitLine(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		lines, changed := c.log.lines()
		for _, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-c.done:
			if _, now := c.log.lines(); now != changed {
				continue // output arrived with the exit; look once more
			}
			return nil, fmt.Errorf("%s exited (%v) before logging %q; its output:\n%s", c.name, c.err, re, c.log.tail(20))
		case <-ctx.Done():
			return nil, fmt.Errorf("%s logged no line matching %q: %w; its output:\n%s", c.name, re, context.Cause(ctx), c.log.tail(20))
		}
	}
}

// stop sends SIGTERM, then SIGKILL after stopGrace, and waits (bounded)
// for the child to be reaped.
func (c *child) stop() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(stopGrace):
	}
	c.cmd.Process.Kill()
	select {
	case <-c.done:
		return fmt.Errorf("%s ignored SIGTERM for %s and was killed", c.name, stopGrace)
	case <-time.After(stopGrace):
		return fmt.Errorf("%s (pid %d) not reaped %s after SIGKILL", c.name, c.pid(), stopGrace)
	}
}

// exited reports whether the child has ended, with its status.
func (c *child) exited() (bool, error) {
	select {
	case <-c.done:
		return true, c.err
	default:
		return false, nil
	}
}
