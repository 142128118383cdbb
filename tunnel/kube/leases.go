package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/tunnel-project/tunnel/tunnel"
)

// Replica Leases (tunnel/ha.go, README "High availability"): every
// tunnel-server replica holds a coordination.k8s.io/v1 Lease named
// LeaseNamePrefix + its ID and labelled ReplicaLabel=ReplicaLabelValue, and
// renews it every third of its duration. The replica count is the number
// of such Leases that have not expired, judged by their renewTime and
// leaseDurationSeconds against this replica's clock: replicas whose clocks
// differ by more than a lease's duration less its renewal period miscount
// each other.

const (
	// ReplicaLabel is the label key of every replica's Lease; the Lease
	// informer selects on it.
	ReplicaLabel = "app.kubernetes.io/name"
	// ReplicaLabelValue is the value of ReplicaLabel on replicas' Leases.
	ReplicaLabelValue = "tunnel-server"
	// LeaseNamePrefix starts the name of every replica's Lease; the
	// replica's ID (sanitized) follows.
	LeaseNamePrefix = "tunnel-server-"
	// AddressAnnotation, on a replica's Lease, is the agent address it
	// advertises (LeaseConfig.Address, tunnel-server --advertise-address).
	AddressAnnotation = "tunnel-project.io/advertise-address"

	// DefaultLeaseNamespace is the default LeaseConfig.Namespace.
	DefaultLeaseNamespace = "kube-system"
	// DefaultLeaseDuration is the default LeaseConfig.Duration.
	DefaultLeaseDuration = 30 * time.Second

	// leaseDeleteTimeout bounds the deletion of our own Lease in Stop.
	leaseDeleteTimeout = 5 * time.Second
)

// LeaseConfig configures Leases.
type LeaseConfig struct {
	// Client reads, watches and writes the Leases (get, list, watch,
	// create, update and delete on leases in Namespace;
	// deploy/kubernetes/base/tunnel-server-rbac.yaml).
	Client kubernetes.Interface
	// Namespace holds the replicas' Leases. Default DefaultLeaseNamespace.
	Namespace string
	// ID is this replica's server ID (tunnel.ServerConfig.ID); required. It
	// names the Lease (LeaseNamePrefix + ID, lower-cased, '.' and '_' made
	// '-', and a hash of the ID appended if that changed anything) and is
	// its holderIdentity. Letters, digits, '-', '_' and '.' only.
	ID string
	// Duration is the Lease's duration, in whole seconds (rounded up): a
	// replica that stops renewing leaves the other replicas' counts that
	// long after its last renewal. It renews every Duration/3. At least
	// 1s; default DefaultLeaseDuration.
	Duration time.Duration
	// Address, if set, is the agent address this replica advertises: it is
	// written on the Lease (AddressAnnotation), and the other replicas
	// hand it to their agents (Addresses).
	Address string
	// Logger receives lease renewal failures and replica count changes.
	// Nil discards them.
	Logger *slog.Logger

	// now is the clock that Leases are written and judged by; nil means
	// time.Now. Tests set it.
	now func() time.Time
	// every, if positive, replaces Duration/3 as the renewal and
	// re-evaluation period. Tests set it.
	every time.Duration
}

// Leases is a tunnel.Replicas that counts the replicas by their Leases.
// NewLeases, then Start it (it creates this replica's Lease), wait for
// WaitForSync, and hand it to tunnel.ServerConfig.Replicas; Stop deletes
// this replica's Lease and ends the watch.
type Leases struct {
	cfg      LeaseConfig
	log      *slog.Logger
	name     string // of our own Lease
	seconds  int32  // our Lease's leaseDurationSeconds
	every    time.Duration
	selector labels.Selector
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   coordinationlisters.LeaseNamespaceLister

	wake     chan struct{} // an informer event: count again
	cancel   context.CancelFunc
	loop     sync.WaitGroup // the renewal loop
	stop     chan struct{}  // closed by Stop: ends the informer
	stopOnce sync.Once

	// own is our Lease as last written. Start sets it before the renewal
	// loop starts, the loop alone changes it, and Stop reads it once the
	// loop has ended.
	own *coordinationv1.Lease

	mu     sync.Mutex // guards count and notify, and serializes recount
	count  int
	notify []func()
}

var _ tunnel.Replicas = (*Leases)(nil)

// NewLeases validates cfg and returns Leases that have not started yet;
// Count is 1 until WaitForSync.
func NewLeases(cfg LeaseConfig) (*Leases, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	name, err := LeaseName(cfg.ID)
	if err != nil {
		return nil, &tunnel.ConfigError{Field: "kube.LeaseConfig.ID", Msg: err.Error()}
	}
	l := &Leases{cfg: cfg, log: cfg.Logger, name: name, every: cfg.every, count: 1,
		seconds:  int32((cfg.Duration + time.Second - 1) / time.Second),
		selector: labels.SelectorFromSet(labels.Set{ReplicaLabel: ReplicaLabelValue}),
		wake:     make(chan struct{}, 1), stop: make(chan struct{}), cancel: func() {}}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.log = l.log.With("lease", cfg.Namespace+"/"+name)
	if l.every <= 0 {
		l.every = cfg.Duration / 3
	}
	l.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = l.selector.String() }))
	leases := l.factory.Coordination().V1().Leases()
	l.informer, l.lister = leases.Informer(), leases.Lister().Leases(cfg.Namespace)
	poke := func(any) { l.poke() }
	_, err = l.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { l.poke() },
		DeleteFunc: poke,
	})
	if err != nil {
		return nil, fmt.Errorf("kube: lease informer: %w", err)
	}
	return l, nil
}

func (c *LeaseConfig) setDefaults() error {
	if c.Client == nil {
		return &tunnel.ConfigError{Field: "kube.LeaseConfig.Client", Msg: "a Kubernetes client is required"}
	}
	if c.Namespace == "" {
		c.Namespace = DefaultLeaseNamespace
	}
	if errs := validation.IsDNS1123Label(c.Namespace); len(errs) > 0 {
		return &tunnel.ConfigError{Field: "kube.LeaseConfig.Namespace", Msg: fmt.Sprintf("%q is not a namespace name: %s", c.Namespace, errs[0])}
	}
	if c.Duration == 0 {
		c.Duration = DefaultLeaseDuration
	}
	if c.Duration < time.Second || c.Duration > math.MaxInt32*time.Second {
		return &tunnel.ConfigError{Field: "kube.LeaseConfig.Duration", Msg: fmt.Sprintf("must be at least 1s, not %s", c.Duration)}
	}
	if c.now == nil {
		c.now = time.Now
	}
	return nil
}

// LeaseName returns the name of the Lease of the replica with the given ID:
// LeaseNamePrefix and the ID, lower-cased with '.' and '_' made '-', and,
// if that changed the ID, the start of its SHA-256 so that IDs differing
// only there get Leases of their own. It fails for an empty ID, one with
// other characters, one without a letter or digit, and one too long for a
// Kubernetes name.
func LeaseName(id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("a replica ID is required")
	}
	b := []byte(id)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			b[i] = c - 'A' + 'a'
		case c == '.' || c == '_':
			b[i] = '-'
		default:
			return "", fmt.Errorf("replica ID %q: only letters, digits, '-', '_' and '.' fit in a Lease name", id)
		}
	}
	s := trimDashes(string(b))
	if s == "" {
		return "", fmt.Errorf("replica ID %q has no letter or digit", id)
	}
	name := LeaseNamePrefix + s
	if s != id {
		sum := sha256.Sum256([]byte(id))
		name += "-" + hex.EncodeToString(sum[:4])
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", fmt.Errorf("replica ID %q: Lease name %s: %s", id, name, errs[0])
	}
	return name, nil
}

func trimDashes(s string) string {
	for len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	for len(s) > 0 && s[len(s)-1] == '-' {
		s = s[:len(s)-1]
	}
	return s
}

// Name returns the name of this replica's Lease.
func (l *Leases) Name() string { return l.name }

// Start creates this replica's Lease, or takes it over if it exists (a
// restart with the same ID), then watches the Leases and renews ours
// every Duration/3 until Stop; ctx bounds only the first write. A renewal
// that fails is logged and tried again at the next period. Call Start
// once.
func (l *Leases) Start(ctx context.Context) error {
	if err := l.acquire(ctx); err != nil {
		return fmt.Errorf("kube: lease %s/%s: %w", l.cfg.Namespace, l.name, err)
	}
	l.factory.Start(l.stop)
	var loopCtx context.Context
	loopCtx, l.cancel = context.WithCancel(context.Background())
	l.loop.Add(1)
	go l.run(loopCtx)
	return nil
}

// WaitForSync blocks until the informer has listed the Leases, or ctx
// ends; Count then counts them.
func (l *Leases) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), l.informer.HasSynced) {
		return fmt.Errorf("kube: leases not listed: %w", context.Cause(ctx))
	}
	l.recount(true)
	l.poke() // run sets its expiry timer
	return nil
}

// Stop stops renewing, deletes this replica's Lease so that the other
// replicas count one fewer at once (best effort: otherwise it expires),
// ends the watch and waits for the goroutines of Leases.
func (l *Leases) Stop() {
	l.stopOnce.Do(func() {
		l.cancel()
		l.loop.Wait()
		l.release()
		close(l.stop)
		l.factory.Shutdown()
	})
}

// Count implements tunnel.Replicas: the replicas whose Leases have not
// expired, this one included whatever its Lease says.
func (l *Leases) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count
}

// Addresses implements tunnel.Replicas: the advertised addresses on the
// unexpired Leases, by holder (the replica's server ID), ours included.
func (l *Leases) Addresses() map[string]string {
	leases, err := l.lister.List(l.selector)
	if err != nil {
		return nil
	}
	now := l.cfg.now()
	addrs := make(map[string]string)
	for _, lease := range leases {
		addr, holder := lease.Annotations[AddressAnnotation], ptrValue(lease.Spec.HolderIdentity)
		if end, ok := leaseEnd(lease); ok && end.After(now) && addr != "" && holder != "" {
			addrs[holder] = addr
		}
	}
	return addrs
}

// Notify implements tunnel.Replicas: f is called, with no lock held, after
// each change of Count.
func (l *Leases) Notify(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notify = append(l.notify, f)
}

// run renews our Lease and counts the Leases again on informer events, on
// every renewal and when the next Lease expires (which no event tells).
func (l *Leases) run(ctx context.Context) {
	defer l.loop.Done()
	renew := time.NewTicker(l.every)
	defer renew.Stop()
	expiry := time.NewTimer(l.every)
	defer expiry.Stop()
	renewed := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			err := l.renew(ctx)
			if renewed = err == nil; !renewed && ctx.Err() == nil {
				l.log.Warn("lease renewal failed; retrying", "err", err, "retry", l.every)
			}
		case <-l.wake:
		case <-expiry.C:
		}
		if next := l.recount(renewed && l.cacheCurrent()); next > 0 {
			expiry.Reset(next)
		} else {
			expiry.Stop()
		}
	}
}

// cacheCurrent reports whether the informer's cache holds our Lease as we
// last wrote it: if it does not, the watch may be stalled, and the other
// Leases may look expired only because their renewals have not arrived.
func (l *Leases) cacheCurrent() bool {
	cached, err := l.lister.Get(l.name)
	return err == nil && l.own != nil && cached.ResourceVersion == l.own.ResourceVersion
}

// poke asks run to count again, without blocking the informer.
func (l *Leases) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// recount sets the count from the informer's cache, tells the subscribers
// if it changed, and returns the time until the next counted Lease expires
// (0: none). Unless mayLower, it keeps a count higher than the cache
// shows: while our own renewals fail or the cache lags behind them, other
// replicas' Leases are not known to have expired, and a count that is too
// low would stop agents looking for replicas that are there.
func (l *Leases) recount(mayLower bool) (next time.Duration) {
	l.mu.Lock()
	leases, err := l.lister.List(l.selector)
	if err != nil { // the lister does not fail; keep the count if it does
		l.mu.Unlock()
		return 0
	}
	now, n := l.cfg.now(), 1
	for _, lease := range leases {
		end, ok := leaseEnd(lease)
		if lease.Name == l.name || !ok || !end.After(now) {
			continue
		}
		n++
		if d := end.Sub(now); next == 0 || d < next {
			next = d
		}
	}
	old := l.count
	if n < old && !mayLower {
		n = old
	}
	l.count = n
	subs := slices.Clone(l.notify)
	l.mu.Unlock()
	if n != old {
		l.log.Info("replica count changed", "replicas", n, "was", old)
		for _, f := range subs {
			f()
		}
	}
	return next
}

// leaseEnd returns when a Lease expires unless renewed; false if it says
// no renewal time or duration.
func leaseEnd(lease *coordinationv1.Lease) (time.Time, bool) {
	s := lease.Spec
	if s.RenewTime == nil || s.LeaseDurationSeconds == nil || *s.LeaseDurationSeconds <= 0 {
		return time.Time{}, false
	}
	return s.RenewTime.Add(time.Duration(*s.LeaseDurationSeconds) * time.Second), true
}

// acquire writes our Lease afresh: creates it, or takes over the one with
// its name, whoever held it.
func (l *Leases) acquire(ctx context.Context) error {
	leases := l.cfg.Client.CoordinationV1().Leases(l.cfg.Namespace)
	now := metav1.NewMicroTime(l.cfg.now())
	cur, err := leases.Get(ctx, l.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: l.name, Namespace: l.cfg.Namespace}}
		l.fill(lease, now)
		created, err := leases.Create(ctx, lease, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		l.own = created
		l.log.Info("lease created")
		return nil
	}
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	lease := cur.DeepCopy()
	if h := lease.Spec.HolderIdentity; h != nil && *h != l.cfg.ID {
		lease.Spec.LeaseTransitions = new(ptrValue(lease.Spec.LeaseTransitions) + 1)
	}
	l.fill(lease, now)
	updated, err := leases.Update(ctx, lease, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("take over: %w", err)
	}
	l.own = updated
	l.log.Info("lease taken over", "holder", ptrValue(cur.Spec.HolderIdentity))
	return nil
}

// fill makes lease ours, acquired and renewed now.
func (l *Leases) fill(lease *coordinationv1.Lease, now metav1.MicroTime) {
	if lease.Labels == nil {
		lease.Labels = map[string]string{}
	}
	lease.Labels[ReplicaLabel] = ReplicaLabelValue
	if l.cfg.Address != "" {
		if lease.Annotations == nil {
			lease.Annotations = map[string]string{}
		}
		lease.Annotations[AddressAnnotation] = l.cfg.Address
	} else {
		delete(lease.Annotations, AddressAnnotation)
	}
	lease.Spec.HolderIdentity = new(l.cfg.ID)
	lease.Spec.LeaseDurationSeconds = new(l.seconds)
	lease.Spec.AcquireTime = &now
	lease.Spec.RenewTime = &now
}

func ptrValue[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}

// renew moves our Lease's renewTime to now. If the Lease changed or went
// away since we last wrote it, it acquires it afresh.
func (l *Leases) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.every)
	defer cancel()
	if l.own == nil {
		return l.acquire(ctx)
	}
	lease := l.own.DeepCopy()
	lease.Spec.RenewTime = new(metav1.NewMicroTime(l.cfg.now()))
	updated, err := l.cfg.Client.CoordinationV1().Leases(l.cfg.Namespace).Update(ctx, lease, metav1.UpdateOptions{})
	switch {
	case err == nil:
		l.own = updated
		return nil
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		l.log.Info("lease changed or deleted by another writer; acquiring it again", "err", err)
		l.own = nil
		return l.acquire(ctx)
	}
	return fmt.Errorf("renew: %w", err)
}

// release deletes our Lease unless someone wrote it after us.
func (l *Leases) release() {
	if l.own == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaseDeleteTimeout)
	defer cancel()
	var opts metav1.DeleteOptions
	if rv := l.own.ResourceVersion; rv != "" {
		opts.Preconditions = &metav1.Preconditions{ResourceVersion: &rv}
	}
	err := l.cfg.Client.CoordinationV1().Leases(l.cfg.Namespace).Delete(ctx, l.name, opts)
	switch {
	case err == nil:
		l.log.Info("lease deleted")
	case apierrors.IsNotFound(err):
		l.log.Info("lease already deleted")
	case apierrors.IsConflict(err):
		l.log.Info("lease not deleted: another writer changed it", "err", err)
	default:
		l.log.Warn("lease not deleted; it will expire", "err", err)
	}
	l.own = nil
}
