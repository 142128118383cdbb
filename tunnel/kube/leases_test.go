package kube

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/tunnel-project/tunnel/tunnel"
)

// Leases over a fake clientset and a real informer, on a clock the test
// moves; renewals and re-evaluations every few milliseconds of real time.

// testEvery is the renewal and re-evaluation period in these tests.
const testEvery = 5 * time.Millisecond

// testWait bounds every wait for something asynchronous.
const testWait = 5 * time.Second

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// replicas is a started Leases, synced and watching, whose Notify sends
// the count on counts.
type replicas struct {
	*Leases
	client *fake.Clientset
	clock  *clock
	counts chan int
}

// newLease returns a replica's Lease as another replica would write it.
func newLease(ns, name string, lbls map[string]string, renew time.Time, seconds int32) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: new(strings.TrimPrefix(name, LeaseNamePrefix)),
			LeaseDurationSeconds: new(seconds), RenewTime: new(metav1.NewMicroTime(renew))},
	}
}

// otherLease returns a labelled Lease in kube-system renewed at renew.
func otherLease(id string, renew time.Time, seconds int32) *coordinationv1.Lease {
	return newLease(DefaultLeaseNamespace, LeaseNamePrefix+id, map[string]string{ReplicaLabel: ReplicaLabelValue}, renew, seconds)
}

// startReplicas starts Leases over a fake clientset holding objs.
func startReplicas(t *testing.T, cfg LeaseConfig, objs ...runtime.Object) *replicas {
	t.Helper()
	return startReplicasOn(t, fake.NewClientset(objs...), newClock(), cfg)
}

// startReplicasOn starts Leases over client and waits until its informer
// lists and watches. A zero cfg.every means testEvery; a nil cfg.now, c.
func startReplicasOn(t *testing.T, client *fake.Clientset, c *clock, cfg LeaseConfig) *replicas {
	t.Helper()
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("leases", func(k8stesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil // the default reactor serves the watch
	})
	cfg.Client = client
	if cfg.ID == "" {
		cfg.ID = "replica-a"
	}
	if cfg.every == 0 {
		cfg.every = testEvery
	}
	if cfg.now == nil {
		cfg.now = c.now
	}
	l, err := NewLeases(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &replicas{Leases: l, client: client, clock: c, counts: make(chan int, 1000)}
	// Count in the callback: it must not be called under Leases' lock.
	l.Notify(func() { r.counts <- l.Count() })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	if err := l.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watching: // changes from now on reach the informer
	case <-ctx.Done():
		t.Fatal("informer never watched")
	}
	for len(r.counts) > 0 { // the initial listing's
		<-r.counts
	}
	return r
}

// waitCount waits for a notification that the count is want.
func (r *replicas) waitCount(t *testing.T, want int) {
	t.Helper()
	timeout := time.After(testWait)
	last := r.Count()
	for {
		select {
		case last = <-r.counts:
			if last == want {
				return
			}
		case <-timeout:
			t.Fatalf("no notification of count %d; last %d, Count() = %d", want, last, r.Count())
		}
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *replicas) get(t *testing.T, name string) (*coordinationv1.Lease, error) {
	t.Helper()
	return r.client.CoordinationV1().Leases(DefaultLeaseNamespace).Get(context.Background(), name, metav1.GetOptions{})
}

func (r *replicas) create(t *testing.T, lease *coordinationv1.Lease) {
	t.Helper()
	if _, err := r.client.CoordinationV1().Leases(lease.Namespace).Create(context.Background(), lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func renewTime(l *coordinationv1.Lease) time.Time {
	if l.Spec.RenewTime == nil {
		return time.Time{}
	}
	return l.Spec.RenewTime.Time
}

func TestOwnLeaseCreatedAndRenewed(t *testing.T) {
	r := startReplicas(t, LeaseConfig{ID: "replica-a", Duration: 15 * time.Second})
	t0 := r.clock.now()
	lease, err := r.get(t, "tunnel-server-replica-a")
	if err != nil {
		t.Fatal(err)
	}
	if got := lease.Labels[ReplicaLabel]; got != ReplicaLabelValue {
		t.Errorf("label %s = %q, want %q", ReplicaLabel, got, ReplicaLabelValue)
	}
	if h := ptrValue(lease.Spec.HolderIdentity); h != "replica-a" {
		t.Errorf("holderIdentity %q, want replica-a", h)
	}
	if d := ptrValue(lease.Spec.LeaseDurationSeconds); d != 15 {
		t.Errorf("leaseDurationSeconds %d, want 15", d)
	}
	if lease.Spec.AcquireTime == nil || !lease.Spec.AcquireTime.Time.Equal(t0) || !renewTime(lease).Equal(t0) {
		t.Errorf("acquireTime %v, renewTime %v; want both %v", lease.Spec.AcquireTime, lease.Spec.RenewTime, t0)
	}

	r.clock.advance(7 * time.Second)
	t1 := r.clock.now()
	eventually(t, "renewTime advances to the clock's time", func() bool {
		lease, err = r.get(t, r.Name())
		return err == nil && renewTime(lease).Equal(t1)
	})
	if !lease.Spec.AcquireTime.Time.Equal(t0) {
		t.Errorf("a renewal moved acquireTime to %v", lease.Spec.AcquireTime)
	}
	if n := r.Count(); n != 1 {
		t.Errorf("Count = %d alone, want 1", n)
	}
}

func TestCountOtherReplicas(t *testing.T) {
	r := startReplicas(t, LeaseConfig{})
	if n := r.Count(); n != 1 {
		t.Fatalf("Count = %d alone, want 1", n)
	}
	now := r.clock.now()
	r.create(t, otherLease("replica-b", now, 30))
	r.create(t, otherLease("replica-c", now, 30))
	r.waitCount(t, 3)

	if err := r.client.CoordinationV1().Leases(DefaultLeaseNamespace).Delete(context.Background(), LeaseNamePrefix+"replica-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitCount(t, 2)
}

// TestAddresses: a replica writes its advertised address on its Lease, and
// Addresses lists those of the unexpired Leases by holder.
func TestAddresses(t *testing.T) {
	r := startReplicas(t, LeaseConfig{ID: "replica-a", Address: "10.0.0.11:8132"})
	lease, err := r.get(t, r.Name())
	if err != nil {
		t.Fatal(err)
	}
	if got := lease.Annotations[AddressAnnotation]; got != "10.0.0.11:8132" {
		t.Fatalf("annotation %s = %q, want 10.0.0.11:8132", AddressAnnotation, got)
	}
	now := r.clock.now()
	b, stale, none := otherLease("replica-b", now, 30), otherLease("replica-c", now.Add(-time.Minute), 30), otherLease("replica-d", now, 30)
	b.Annotations = map[string]string{AddressAnnotation: "10.0.0.12:8132"}
	stale.Annotations = map[string]string{AddressAnnotation: "10.0.0.13:8132"}
	for _, l := range []*coordinationv1.Lease{b, stale, none} {
		r.create(t, l)
	}
	want := map[string]string{"replica-a": "10.0.0.11:8132", "replica-b": "10.0.0.12:8132"}
	eventually(t, "the addresses of the unexpired Leases", func() bool { return maps.Equal(r.Addresses(), want) })
}

func TestExpiredLeasesAreNotCounted(t *testing.T) {
	c := newClock()
	now := c.now()
	noRenewTime := otherLease("no-renew-time", now, 30)
	noRenewTime.Spec.RenewTime = nil
	r := startReplicasOn(t, fake.NewClientset(
		otherLease("stale", now.Add(-31*time.Second), 30),
		noRenewTime,
		otherLease("fresh", now.Add(-5*time.Second), 10),
		otherLease("fresher", now, 20)), c, LeaseConfig{})
	if n := r.Count(); n != 3 {
		t.Fatalf("Count = %d, want 3: us, fresh and fresher", n)
	}
	// fresh expires at +5s, fresher at +20s; neither Lease changes.
	c.advance(5 * time.Second)
	r.waitCount(t, 2)
	c.advance(15*time.Second - time.Microsecond)
	time.Sleep(10 * testEvery) // several re-evaluations
	if n := r.Count(); n != 2 {
		t.Fatalf("Count = %d a microsecond before fresher expires, want 2", n)
	}
	c.advance(time.Microsecond)
	r.waitCount(t, 1)
}

// TestExpiryTimer checks, on the real clock and with no renewals, that the
// count drops when a Lease expires, though nothing about it changes.
func TestExpiryTimer(t *testing.T) {
	r := startReplicasOn(t, fake.NewClientset(), newClock(), LeaseConfig{now: time.Now, every: time.Hour})
	// A Lease of 1s renewed 500ms ago: it expires 500ms from now.
	renewed := time.Now().Add(-500 * time.Millisecond)
	r.create(t, otherLease("replica-b", renewed, 1))
	r.waitCount(t, 2)
	r.waitCount(t, 1)
	expired := renewed.Add(time.Second)
	if late := time.Since(expired); late < 0 || late > time.Second {
		t.Errorf("the count dropped %s after the Lease expired, want soon after", late)
	}
}

func TestStopDeletesOwnLease(t *testing.T) {
	client := fake.NewClientset()
	c := newClock()
	a := startReplicasOn(t, client, c, LeaseConfig{ID: "replica-a"})
	b := startReplicasOn(t, client, c, LeaseConfig{ID: "replica-b"})
	a.waitCount(t, 2)
	if n := b.Count(); n != 2 {
		t.Fatalf("replica-b counts %d, want 2", n)
	}
	b.Stop()
	if _, err := a.get(t, b.Name()); !apierrors.IsNotFound(err) {
		t.Errorf("replica-b's Lease after Stop: %v, want not found", err)
	}
	a.waitCount(t, 1) // at once: the clock has not moved
	if _, err := a.get(t, a.Name()); err != nil {
		t.Errorf("replica-a's Lease: %v", err)
	}
}

func TestLeasesOutsideTheSelectionAreIgnored(t *testing.T) {
	c := newClock()
	now := c.now()
	lbls := map[string]string{ReplicaLabel: ReplicaLabelValue}
	r := startReplicasOn(t, fake.NewClientset(
		newLease("default", "tunnel-server-x", lbls, now, 30),
		newLease(DefaultLeaseNamespace, "tunnel-server-y", nil, now, 30),
		newLease(DefaultLeaseNamespace, "tunnel-server-z", map[string]string{ReplicaLabel: "other"}, now, 30),
	), c, LeaseConfig{})
	if n := r.Count(); n != 1 {
		t.Fatalf("Count = %d, want 1: no Lease is another replica's", n)
	}
	// Through the watch too; the one that counts comes last.
	r.create(t, newLease("default", "tunnel-server-u", lbls, now, 30))
	r.create(t, newLease(DefaultLeaseNamespace, "tunnel-server-v", nil, now, 30))
	r.create(t, otherLease("w", now, 30))
	r.waitCount(t, 2)
	time.Sleep(10 * testEvery)
	if n := r.Count(); n != 2 {
		t.Errorf("Count = %d, want 2", n)
	}
}

func TestTakesOverAnExistingLease(t *testing.T) {
	c := newClock()
	old := newLease(DefaultLeaseNamespace, "tunnel-server-replica-a", nil, c.now().Add(-time.Hour), 30)
	old.Spec.HolderIdentity = new("someone-else")
	r := startReplicasOn(t, fake.NewClientset(old), c, LeaseConfig{ID: "replica-a", Duration: 12 * time.Second})
	lease, err := r.get(t, "tunnel-server-replica-a")
	if err != nil {
		t.Fatal(err)
	}
	if lease.Labels[ReplicaLabel] != ReplicaLabelValue || ptrValue(lease.Spec.HolderIdentity) != "replica-a" ||
		ptrValue(lease.Spec.LeaseDurationSeconds) != 12 || !renewTime(lease).Equal(c.now()) ||
		ptrValue(lease.Spec.LeaseTransitions) != 1 {
		t.Errorf("after the takeover: labels %v, spec %+v", lease.Labels, lease.Spec)
	}
}

func TestRenewalRetriesAndRecreates(t *testing.T) {
	client := fake.NewClientset()
	var failing atomic.Int32
	failing.Store(-1) // not yet: let Start create the Lease
	client.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() > 0 {
			failing.Add(-1)
			return true, nil, apierrors.NewInternalError(errors.New("etcd is unwell"))
		}
		return false, nil, nil
	})
	r := startReplicasOn(t, client, newClock(), LeaseConfig{})
	failing.Store(3)
	r.clock.advance(time.Second)
	t1 := r.clock.now()
	eventually(t, "renewTime advances after the failures", func() bool {
		lease, err := r.get(t, r.Name())
		return err == nil && renewTime(lease).Equal(t1)
	})
	if n := failing.Load(); n != 0 {
		t.Errorf("%d injected failures left: the renewal did not go through them", n)
	}

	// Someone deletes our Lease: the next renewal creates it again.
	if err := client.CoordinationV1().Leases(DefaultLeaseNamespace).Delete(context.Background(), r.Name(), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted Lease is created again", func() bool {
		_, err := r.get(t, r.Name())
		return err == nil
	})
}

// TestCountHeldWhileRenewalsFail: while this replica cannot renew its own
// Lease, its view of the others may be stale too, so an expiry does not
// lower the count; once a renewal goes through, it does.
func TestCountHeldWhileRenewalsFail(t *testing.T) {
	client := fake.NewClientset()
	var failing atomic.Bool
	var failed atomic.Int32
	client.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() {
			failed.Add(1)
			return true, nil, apierrors.NewInternalError(errors.New("etcd is unwell"))
		}
		return false, nil, nil
	})
	c := newClock()
	r := startReplicasOn(t, client, c, LeaseConfig{})
	r.create(t, otherLease("replica-b", c.now(), 10))
	r.waitCount(t, 2)

	failing.Store(true)
	eventually(t, "a renewal to fail", func() bool { return failed.Load() > 0 })
	c.advance(11 * time.Second) // replica-b has expired, by our clock
	time.Sleep(10 * testEvery)  // several failed renewals and re-evaluations
	if n := r.Count(); n != 2 {
		t.Fatalf("Count = %d while renewals fail, want 2 kept", n)
	}
	failing.Store(false)
	r.waitCount(t, 1)
}

func TestLeaseName(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"replica-a", "tunnel-server-replica-a"},
		{"0123456789abcdef", "tunnel-server-0123456789abcdef"},
		{"Node_A.example", "tunnel-server-node-a-example-"},
		{"node-a-example", "tunnel-server-node-a-example"},
		{"-x-", "tunnel-server-x-"},
	} {
		got, err := LeaseName(tc.id)
		if err != nil {
			t.Errorf("LeaseName(%q): %v", tc.id, err)
			continue
		}
		if strings.HasSuffix(tc.want, "-") { // a hash follows
			if !strings.HasPrefix(got, tc.want) || len(got) != len(tc.want)+8 {
				t.Errorf("LeaseName(%q) = %q, want %s and 8 hex digits", tc.id, got, tc.want)
			}
		} else if got != tc.want {
			t.Errorf("LeaseName(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
	a, _ := LeaseName("Node_A.example")
	b, _ := LeaseName("node_a.example")
	if a == b {
		t.Errorf("IDs differing in case share the Lease %s", a)
	}

	for _, id := range []string{"", "../etc", "a/b", "a b", "a:b", "nöde", "a\x00", "___", "..", strings.Repeat("a", 240)} {
		if name, err := LeaseName(id); err == nil {
			t.Errorf("LeaseName(%q) = %q, want an error", id, name)
		}
	}
}

func TestNewLeasesRejectsBadConfig(t *testing.T) {
	client := fake.NewClientset()
	for _, tc := range []struct {
		cfg   LeaseConfig
		field string
	}{
		{LeaseConfig{ID: "a"}, "kube.LeaseConfig.Client"},
		{LeaseConfig{Client: client}, "kube.LeaseConfig.ID"},
		{LeaseConfig{Client: client, ID: "../a"}, "kube.LeaseConfig.ID"},
		{LeaseConfig{Client: client, ID: "a", Namespace: "Kube_System"}, "kube.LeaseConfig.Namespace"},
		{LeaseConfig{Client: client, ID: "a", Duration: 500 * time.Millisecond}, "kube.LeaseConfig.Duration"},
		{LeaseConfig{Client: client, ID: "a", Duration: -time.Second}, "kube.LeaseConfig.Duration"},
	} {
		_, err := NewLeases(tc.cfg)
		var ce *tunnel.ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("NewLeases(%+v) = %v, want a ConfigError for %s", tc.cfg, err, tc.field)
		}
	}
	// Defaults, and a Leases never started stops cleanly.
	l, err := NewLeases(LeaseConfig{Client: client, ID: "a", Duration: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	if l.cfg.Namespace != DefaultLeaseNamespace || l.seconds != 2 || l.every != 500*time.Millisecond || l.Count() != 1 {
		t.Errorf("namespace %s, seconds %d, every %s, count %d", l.cfg.Namespace, l.seconds, l.every, l.Count())
	}
}
