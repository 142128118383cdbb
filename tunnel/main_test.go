package tunnel

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// goroutine the library starts has an owner that waits for it (STYLE.md,
// habit 4), and every test closes what it started in its cleanup. The
// harness also checks after each test (newHarness), which names the test
// that leaked. Nothing is ignored: the package starts no goroutine that is
// meant to outlive a Server or an Agent, and its dependencies (yamux,
// Prometheus collectors, sync.Pool) start none that survive a closed
// session.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// checkLeaks fails t if goroutines started during the test are still
// running once its cleanups are done. Call it first, so that its cleanup
// runs last. A worker waiting for a job (workers.go) is let pass: it may
// belong to a server or agent that the test made earlier and that a later
// cleanup closes; TestMain still finds one that outlives its owner.
func checkLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	idle := goleak.IgnoreTopFunction("github.com/tunnel-project/tunnel/tunnel.(*workers).work")
	t.Cleanup(func() {
		if err := goleak.Find(ignore, idle); err != nil {
			t.Errorf("goroutines left running after the test: %v", err)
		}
	})
}
