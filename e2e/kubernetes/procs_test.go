//go:build linux

package kubernetes

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds on waits. Generous: the tests must pass on a loaded two-core
// machine, and every wait polls for its condition, so a fast machine never
// waits them out.
const (
	commandTimeout = 60 * time.Second  // short-lived commands: ip, certs
	startTimeout   = 120 * time.Second // a process becoming ready (kube-apiserver on a busy machine)
	stopTimeout    = 30 * time.Second  // a process reaped after a signal
	kubectlTimeout = 120 * time.Second // one kubectl command
	pollInterval   = 50 * time.Millisecond
	logTailLines   = 60 // lines of each process's output shown on failure
)

// run runs argv to completion and returns its combined output.
func run(t testing.TB, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%q did not finish within %s; output:\n%s", argv, commandTimeout, out)
	}
	return string(out), err
}

// mustRun runs argv and fails the test unless it exits 0.
func mustRun(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := run(t, argv...)
	if err != nil {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
	return out
}

// logBuffer collects a process's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tail returns the last n lines.
func (l *logBuffer) tail(n int) string {
	lines := strings.Split(strings.TrimRight(l.String(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// proc is a running child process whose output is captured.
type proc struct {
	name  string
	argv  []string
	cmd   *exec.Cmd
	out   *logBuffer
	done  chan struct{} // closed once reaped; err and ended are then set
	err   error
	ended time.Time // when it was reaped
}

// startProc starts argv. Cleanup kills it (SIGKILL) if still running, and
// prints the tail of its output if the test failed.
func startProc(t testing.TB, name string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, argv: argv, out: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s %q: %v", name, argv, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			t.Logf("--- %s (pid %d) %q, last %d lines:\n%s", name, p.cmd.Process.Pid, argv, logTailLines, p.out.tail(logTailLines))
		}
	})
	return p
}

// exited reports whether the process has been reaped.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL unless the process is gone, and reaps it.
func (p *proc) kill(t testing.TB) {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s (pid %d) not reaped %s after SIGKILL", p.name, p.cmd.Process.Pid, stopTimeout)
	}
}

// stop sends SIGTERM and waits up to timeout for the process to exit,
// returning how long it took.
func (p *proc) stop(t testing.TB, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		t.Fatalf("SIGTERM to %s: %v", p.name, err)
	}
	select {
	case <-p.done:
		return time.Since(start)
	case <-time.After(timeout):
		t.Fatalf("%s still running %s after SIGTERM", p.name, timeout)
		return 0
	}
}

// waitLog polls the output until re matches and returns the submatches.
func (p *proc) waitLog(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	eventually(t, timeout, func() (bool, string) {
		if m = re.FindStringSubmatch(p.out.String()); m != nil {
			return true, ""
		}
		if p.exited() {
			if m = re.FindStringSubmatch(p.out.String()); m != nil {
				return true, ""
			}
			t.Fatalf("%s exited (%v) before logging %q", p.name, p.err, re)
		}
		return false, fmt.Sprintf("%s logged no %q", p.name, re)
	})
	return m
}

// eventually polls cond until it returns true, failing after timeout with
// the last message cond returned.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %s: %s", timeout, msg)
		}
		time.Sleep(pollInterval)
	}
}

// sigterm is the signal a rollout sends to the old agent.
var sigterm = syscall.SIGTERM
