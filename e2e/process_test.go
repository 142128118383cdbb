package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopTimeout bounds how long cleanup waits for a killed process to be reaped.
const stopTimeout = 10 * time.Second

// logBuffer collects a process's output and lets tests wait for a line.
// It is safe for concurrent use.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newLogBuffer() *logBuffer {
	return &logBuffer{changed: make(chan struct{})}
}

// Write appends p and wakes every waiter.
func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// String returns everything written so far.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// snapshot returns the complete lines written so far and a channel closed on
// the next write.
func (l *logBuffer) snapshot() ([]string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.buf.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		s = ""
	}
	if s == "" {
		return nil, l.changed
	}
	return strings.Split(s, "\n"), l.changed
}

// process is a binary under test running as a child process.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed when the process has exited
	err  error         // exit status; valid after done is closed
}

// startProcess starts bin with args, kills it in cleanup, and prints its
// output if the test failed.
func startProcess(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, log: newLogBuffer(), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	p.cmd.WaitDelay = stopTimeout
	t.Logf("starting %s: %s %s", name, bin, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop kills the process, waits for it (bounded) and dumps its log on failure.
func (p *process) stop(t *testing.T) {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s (pid %d) not reaped %v after SIGKILL", p.name, p.cmd.Process.Pid, stopTimeout)
	}
	if t.Failed() {
		t.Logf("----- %s log -----\n%s----- end of %s log -----", p.name, p.log.String(), p.name)
	}
}

// exited reports whether the process has ended, with its status.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// waitLine waits until a line of the output matches re and returns the
// submatches of the first such line. It fails if the process exits first or
// the context ends.
func (p *process) waitLine(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		lines, changed := p.log.snapshot()
		for _, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			if _, c := p.log.snapshot(); c != changed {
				continue // output arrived with the exit; look once more
			}
			return nil, fmt.Errorf("%s exited (%v) before logging a line matching %q", p.name, p.err, re)
		case <-ctx.Done():
			return nil, fmt.Errorf("%s logged no line matching %q: %w", p.name, re, ctx.Err())
		}
	}
}

// listenLine matches the server's start-up line for one listener, e.g.
// `msg=listening listener=agent addr=127.0.0.1:40123`.
func listenLine(listener string) *regexp.Regexp {
	return regexp.MustCompile(`msg="?listening"? .*\blistener=` + regexp.QuoteMeta(listener) +
		`\b.*\baddr=("(?:[^"\\]|\\.)*"|\S+)`)
}

// listenAddr waits for the listener's start-up line and returns its address.
func (p *process) listenAddr(ctx context.Context, listener string) (string, error) {
	m, err := p.waitLine(ctx, listenLine(listener))
	if err != nil {
		return "", err
	}
	addr := m[1]
	if strings.HasPrefix(addr, `"`) {
		if addr, err = strconv.Unquote(addr); err != nil {
			return "", fmt.Errorf("listener %s: bad addr %s: %v", listener, m[1], err)
		}
	}
	return addr, nil
}
