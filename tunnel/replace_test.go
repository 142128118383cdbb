package tunnel

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// patientAgent is node-a's config with a reconnect backoff far beyond the
// test, so that an agent whose session the server closes stays away.
func patientAgent(h *harness, name string, log *dialLog) AgentConfig {
	cfg := h.agentConfig("node-a")
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	cfg.Dial = recordingDial(name, log)
	return cfg
}

// TestDuplicateAgentReplacesOlder: a second session for the same node takes
// every new dial at once; the first is out of routing, keeps its open
// tunnel working, and is closed as soon as that tunnel ends.
func TestDuplicateAgentReplacesOlder(t *testing.T) {
	h := newHarness(t, nil)
	var log dialLog
	firstCfg := patientAgent(h, "first", &log)
	var firstLog *logRecord
	firstCfg.Logger, firstLog = recordLogs(t)
	first := h.startAgent(firstCfg)
	echo := startEcho(t, "127.0.0.1:0")
	old := h.mustConnect(echo)

	second := h.runAgent(patientAgent(h, "second", &log))
	waitFor(t, "the second agent to register", second.Registered)
	for range 3 {
		if err := echoCheck(h.mustConnect(echo), 64); err != nil {
			t.Fatal(err)
		}
		if got := log.get(); !strings.HasPrefix(got, "second ") {
			t.Fatalf("dial went to %q, want the newest agent", got)
		}
	}
	if n := h.srv.Agents(); n != 1 {
		t.Errorf("%d agents in routing, want only the newest", n)
	}
	if err := echoCheck(old, 1<<20); err != nil {
		t.Fatalf("tunnel on the replaced session: %v", err)
	}
	if !first.Registered() {
		t.Fatal("replaced session closed while it still carried a tunnel")
	}
	old.Close()
	waitFor(t, "the replaced session to close after its last tunnel", func() bool { return !first.Registered() })
	if !firstLog.has("session ended", "reason=", "replaced by a newer session for node node-a") {
		t.Error("the replaced agent's log does not say why its session ended")
	}
	if !second.Registered() {
		t.Fatal("the newest session ended too")
	}
	if err := echoCheck(h.mustConnect(echo), 64); err != nil {
		t.Fatal(err)
	}
	if got := log.get(); !strings.HasPrefix(got, "second ") {
		t.Fatalf("dial went to %q after the old session closed, want the newest agent", got)
	}
}

// TestReplacedSessionDrainTimeout: a replaced session whose tunnel does
// not end is closed, tunnel and all, once ReplacedDrainTimeout passes.
func TestReplacedSessionDrainTimeout(t *testing.T) {
	const bound = 300 * time.Millisecond
	h := newHarness(t, func(c *ServerConfig) { c.ReplacedDrainTimeout = bound })
	var log dialLog
	first := h.startAgent(patientAgent(h, "first", &log))
	old := h.mustConnect(startEcho(t, "127.0.0.1:0"))
	second := h.runAgent(patientAgent(h, "second", &log))
	waitFor(t, "the second agent to register", second.Registered)
	start := time.Now()
	if err := waitClosed(old, 5*time.Second); err != nil {
		t.Fatalf("tunnel on the replaced session: %v", err)
	}
	if took := time.Since(start); took < bound/2 {
		t.Errorf("replaced session's tunnel ended after %s, before the %s drain bound", took, bound)
	}
	waitFor(t, "the replaced session to close", func() bool { return !first.Registered() })
}

// TestDeadSessionNotRouted: the moment a session's Done fires, lookups
// skip it, before its handler has removed its routes.
func TestDeadSessionNotRouted(t *testing.T) {
	h := newHarness(t, nil)
	cfg := h.agentConfig("node-a")
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	h.startAgent(cfg)
	a := h.srv.routes.lookup("node-a")
	if a == nil {
		t.Fatal("registered agent not routed")
	}
	a.sess.Close()
	if got := h.srv.routes.lookup("127.0.0.1"); got != nil {
		t.Fatal("a closed session is still routed")
	}
	if _, res := h.connect(startEcho(t, "127.0.0.1:0")); res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "no agent") {
		t.Fatalf("CONNECT after the session closed: %s, want 502 no agent", res.Status)
	}
}

// TestRoutesSkipDeadSessions: table-level check of the same rule, for
// node names, IPs, prefixes and the default route.
func TestRoutesSkipDeadSessions(t *testing.T) {
	r := newRoutes()
	dead := func(a *agentConn) *agentConn {
		ch := make(chan struct{})
		close(ch)
		a.done = ch
		return a
	}
	old := testAgent("node-a", []string{"10.0.0.5"}, []string{"10.244.1.0/24"}, false)
	young := dead(testAgent("node-a", []string{"10.0.0.5"}, []string{"10.244.1.0/24"}, false))
	gw1, gw2 := testAgent("gw-1", nil, nil, true), dead(testAgent("gw-2", nil, nil, true))
	gw1.streams.Store(9) // more loaded, but the only live one
	for _, a := range []*agentConn{old, young, gw1, gw2} {
		r.add(a)
	}
	for host, want := range map[string]*agentConn{"node-a": old, "10.0.0.5": old, "10.244.1.9": old, "10.96.0.1": gw1} {
		if got := r.lookup(host); got != want {
			t.Errorf("lookup(%s) = %s, want %s", host, name(got), name(want))
		}
	}
	dead(old)
	if got := r.lookup("node-a"); got != gw1 {
		t.Errorf("every node-a session dead: lookup = %s, want the default route", name(got))
	}
}
