//go:build linux

package process

// A lossy, slow link between two network namespaces, built in userspace
// because the kernel under test may lack sch_netem (`tc qdisc ... netem`):
// each namespace gets a TUN device instead of a veth end, and this test
// process forwards the IP packets between the two devices, dropping a
// fraction at random and delaying the rest, or dropping everything (a
// silent partition). The tunnel's TCP connection crosses it like any other
// link: the kernels' TCP stacks see real loss, reordering-free delay and
// retransmissions.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// impairBytes is the size of each long transfer over the lossy link. `make
// test` moves 8 MiB each way; `make faults` moves 64 MiB (README, "Testing").
var impairBytes = flag.Int64("impair.bytes", 8<<20, "bytes of each transfer across the lossy link")

// Impairment of TestImpairedLinkLossAndDelay, in each direction.
const (
	impairLoss  = 0.01
	impairDelay = 50 * time.Millisecond
	// impairQueue bounds the packets in flight per direction; more are
	// dropped, as a router's full queue would.
	impairQueue = 4096
)

// openTUN creates TUN device name in this process's network namespace (no
// packet-information header) and returns it; packets the kernel routes out
// of the device are read from the file, packets written to it arrive on the
// device. The device goes away when the file is closed.
func openTUN(name string) (*os.File, error) {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var ifr [40]byte // struct ifreq: name, then flags
	copy(ifr[:syscall.IFNAMSIZ-1], name)
	binary.NativeEndian.PutUint16(ifr[syscall.IFNAMSIZ:], syscall.IFF_TUN|syscall.IFF_NO_PI)
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); errno != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	if err := syscall.SetNonblock(fd, true); err != nil { // so that Close ends a blocked Read
		syscall.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// impairedLink forwards packets between two TUN devices with loss and
// delay, or drops them all while partitioned.
type impairedLink struct {
	srv, node   *os.File // the server and node namespaces' devices
	loss        float64
	delay       time.Duration
	partitioned atomic.Bool
	toNode      linkStats
	toSrv       linkStats
	wg          sync.WaitGroup
}

// linkStats counts one direction's packets.
type linkStats struct{ forwarded, dropped atomic.Int64 }

func (s *linkStats) String() string {
	f, d := s.forwarded.Load(), s.dropped.Load()
	return fmt.Sprintf("%d packets forwarded, %d dropped (%.2f%%)", f, d, 100*float64(d)/float64(max(f+d, 1)))
}

// delayedPacket is a packet and the time it is due at the far end.
type delayedPacket struct {
	due time.Time
	b   []byte
}

// newImpairedLink creates the TUN devices as n's link ends (srvVeth and
// nodeVeth), moves and addresses them (addLink), and forwards between them
// until the test ends.
func newImpairedLink(t *testing.T, n netnsTopology, loss float64, delay time.Duration, seed uint64) *impairedLink {
	t.Helper()
	l := &impairedLink{loss: loss, delay: delay}
	var err error
	if l.srv, err = openTUN(n.srvVeth); err != nil {
		t.Skipf("skipping: cannot create a TUN device: %v", err)
	}
	if l.node, err = openTUN(n.nodeVeth); err != nil {
		l.srv.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.srv.Close()
		l.node.Close()
		l.wg.Wait()
	})
	n.addLink(t)
	l.wg.Add(2)
	go l.forward(l.srv, l.node, &l.toNode, rand.New(rand.NewPCG(seed, 1)))
	go l.forward(l.node, l.srv, &l.toSrv, rand.New(rand.NewPCG(seed, 2)))
	return l
}

// forward reads packets from src until it is closed, drops or delays each,
// and hands the rest in order to a goroutine that writes them to dst when
// due.
func (l *impairedLink) forward(src, dst *os.File, st *linkStats, rng *rand.Rand) {
	defer l.wg.Done()
	q := make(chan delayedPacket, impairQueue)
	l.wg.Add(1)
	go l.deliver(q, dst)
	defer close(q)
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if l.partitioned.Load() || rng.Float64() < l.loss {
			st.dropped.Add(1)
			continue
		}
		select {
		case q <- delayedPacket{due: time.Now().Add(l.delay), b: bytes.Clone(buf[:n])}:
			st.forwarded.Add(1)
		default: // the queue is full
			st.dropped.Add(1)
		}
	}
}

// deliver writes each packet to dst once it is due; every packet has the
// same delay, so the queue is in due order.
func (l *impairedLink) deliver(q <-chan delayedPacket, dst *os.File) {
	defer l.wg.Done()
	for p := range q {
		time.Sleep(time.Until(p.due))
		dst.Write(p.b) // fails only once the test is closing the link
	}
}

// impairedTunnel is a server and an agent in two namespaces joined by an
// impaired link, with a bulk and an echo target in the node namespace.
type impairedTunnel struct {
	link       *impairedLink
	srv        *server
	agent      *proc
	dial       dialer
	bulk, echo string
}

// startImpairedTunnel builds an impairedTunnel whose server and agent ping
// each other with the keepalive flags ka.
func startImpairedTunnel(t *testing.T, loss float64, delay time.Duration, ka []string) *impairedTunnel {
	t.Helper()
	needNetns(t)
	n := newNetnsTopology(os.Getpid())
	n.addNamespaces(t)
	seed := uint64(time.Now().UnixNano())
	it := &impairedTunnel{link: newImpairedLink(t, n, loss, delay, seed)}
	t.Logf("link %s <-> %s: %.0f%% loss and %s delay each way (seed %d)", n.srvNS, n.nodeNS, 100*loss, delay, seed)
	it.bulk = startNetnsHelper(t, n, "bulk")
	it.echo = startNetnsHelper(t, n, "echo")
	cs := newCerts(t, []string{n.srvIP.String()}, nodeA+"="+n.targetIP.String())
	it.srv = startServer(t, cs, serverOpts{listenHost: n.srvIP.String(), wrap: inNS(n.srvNS), extra: ka})
	it.agent = startAgent(t, it.srv, agentOpts{node: nodeA, nodeIPs: []string{n.targetIP.String()}, wrap: inNS(n.nodeNS),
		extra: append([]string{"--reconnect-min-backoff", "100ms", "--reconnect-max-backoff", "500ms", "--handshake-timeout", "5s"}, ka...)})
	it.dial = udsDialer(it.srv.udsPath)
	return it
}

// TestImpairedLinkLossAndDelay sends long transfers through a tunnel whose
// agent session crosses a link with 1% loss and 50 ms delay each way:
// a download, an upload and an echo at once, each on its own tunnel and
// each verified by SHA-256 against the pattern (no byte lost, altered or
// reordered), while keepalive pings (1s, with a 5s timeout: a ping whose
// segment is lost waits for TCP's retransmission, which backs off from
// 200 ms and more) must not take the session down for the loss.
func TestImpairedLinkLossAndDelay(t *testing.T) {
	it := startImpairedTunnel(t, impairLoss, impairDelay, []string{"--keepalive-interval", "1s", "--keepalive-timeout", "5s"})
	if rtt := roundTrip(t, mustConnect(t, it.dial, it.echo)); rtt < 2*impairDelay {
		t.Fatalf("a round trip through the tunnel took %s, less than the link's two delays of %s: the traffic does not cross the link", rtt, impairDelay)
	} else {
		t.Logf("one byte's round trip through the tunnel: %s", rtt.Round(time.Millisecond))
	}
	n := *impairBytes
	deadline := time.Now().Add(10 * time.Minute)
	type result struct {
		name string
		err  error
		took time.Duration
	}
	results := make(chan result, 3)
	for name, run := range map[string]func(net.Conn) error{
		"download": func(c net.Conn) error { return download(c, n, deadline) },
		"upload":   func(c net.Conn) error { return upload(c, n, deadline) },
		"echo":     func(c net.Conn) error { return echoVerified(c, n, deadline) },
	} {
		dest := it.bulk
		if name == "echo" {
			dest = it.echo
		}
		c := mustConnect(t, it.dial, dest)
		go func() {
			start := time.Now()
			err := run(c)
			results <- result{name, err, time.Since(start)}
		}()
	}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Errorf("%s of %d bytes: %v", r.name, n, r.err)
			continue
		}
		t.Logf("%s of %d MiB verified (SHA-256) in %s: %.0f KiB/s", r.name, n>>20, r.took.Round(time.Millisecond),
			float64(n)/1024/r.took.Seconds())
	}
	t.Logf("server -> node: %s; node -> server: %s", &it.link.toNode, &it.link.toSrv)
	if it.link.toNode.dropped.Load() == 0 || it.link.toSrv.dropped.Load() == 0 {
		t.Errorf("the link dropped nothing in one direction; the test proves nothing about loss")
	}
	for _, p := range []*proc{it.agent, it.srv.proc} {
		if kaFailedRE.MatchString(p.out.String()) {
			t.Errorf("%s's keepalive gave up on a link that only loses 1%%:\n%s", p.name, p.out)
		}
	}
}

// TestImpairedLinkPartition silences the link under a flowing download:
// both kernels keep their sockets and send no FIN or reset, every packet
// simply vanishes. Keepalive must notice within interval + timeout on both
// ends, the open tunnel must end (after the bytes received so far, all
// verified), new dials must fail, and once the link heals the agent must
// register again and carry a verified transfer.
func TestImpairedLinkPartition(t *testing.T) {
	it := startImpairedTunnel(t, 0, 5*time.Millisecond, kaFlags)
	c := mustConnect(t, it.dial, it.bulk)
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(bulkHeader(bulkDownload, 1<<40)); err != nil {
		t.Fatal(err)
	}
	const before = 1 << 20
	if err := readPattern(c, 1<<40, before); err != nil {
		t.Fatalf("before the partition: %v", err)
	}

	start := time.Now()
	it.link.partitioned.Store(true)
	took := waitDetected(t, start, detection{it.srv.proc, disconnectedRE}, detection{it.agent, kaFailedRE})
	t.Logf("silent partition, --keepalive-interval %s --keepalive-timeout %s: server dropped the agent after %s, agent gave the session up after %s",
		kaInterval, kaTimeout, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	expectClosed(t, c, closeBound)
	t.Logf("the open tunnel (%d MiB verified before) ended %s after the partition began", before>>20, time.Since(start).Round(time.Millisecond))
	if _, status := connectStatus(t, it.dial, it.bulk); !strings.Contains(status, "no agent") {
		t.Fatalf("CONNECT during the partition: %q, want 502 no agent", status)
	}

	it.link.partitioned.Store(false)
	it.agent.waitLog(t, regexp.MustCompile(`(?s)msg=registered.*msg=registered`), 2*startTimeout)
	t.Logf("healed; the agent registered again. Link: %s / %s", &it.link.toNode, &it.link.toSrv)
	checkEcho(t, mustConnect(t, it.dial, it.echo), 1<<20)
}

// roundTrip times one byte to an echo target and back, the smallest of
// three tries (a lost packet makes a try slow, never fast).
func roundTrip(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	c.SetDeadline(time.Now().Add(ioTimeout))
	best := time.Hour
	b := []byte{'x'}
	for range 3 {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	return best
}

// download asks a bulk target for n bytes and verifies them against the
// pattern and the target's SHA-256 trailer, all before deadline.
func download(c net.Conn, n int64, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(bulkHeader(bulkDownload, uint64(n))); err != nil {
		return err
	}
	h := sha256.New()
	if err := readPattern(io.TeeReader(c, h), uint64(n), n); err != nil {
		return err
	}
	var trailer [sha256.Size]byte
	if _, err := io.ReadFull(c, trailer[:]); err != nil {
		return fmt.Errorf("reading the target's checksum: %w", err)
	}
	if !bytes.Equal(trailer[:], h.Sum(nil)) {
		return fmt.Errorf("target's SHA-256 %x, received %x", trailer, h.Sum(nil))
	}
	return nil
}

// readPattern reads k bytes of the n-byte transfer's pattern from r and
// reports the first byte that differs.
func readPattern(r io.Reader, n uint64, k int64) error {
	want := pattern(n)
	got, exp := make([]byte, 32<<10), make([]byte, 32<<10)
	for off := int64(0); off < k; {
		m := int(min(int64(len(got)), k-off))
		if _, err := io.ReadFull(r, got[:m]); err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", off, k, err)
		}
		io.ReadFull(want, exp[:m])
		if i := mismatch(got[:m], exp[:m]); i >= 0 {
			return fmt.Errorf("byte %d differs from the pattern", off+int64(i))
		}
		off += int64(m)
	}
	return nil
}

func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// upload sends n pattern bytes to a bulk target and compares the SHA-256
// it answers with, all before deadline.
func upload(c net.Conn, n int64, deadline time.Time) error {
	c.SetDeadline(deadline)
	h := sha256.New()
	if _, err := c.Write(bulkHeader(bulkUpload, uint64(n))); err != nil {
		return err
	}
	if _, err := io.CopyN(io.MultiWriter(c, h), pattern(uint64(n)), n); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	var got [sha256.Size]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return fmt.Errorf("reading the target's checksum: %w", err)
	}
	if !bytes.Equal(got[:], h.Sum(nil)) {
		return fmt.Errorf("target hashed %x, sent %x", got, h.Sum(nil))
	}
	return nil
}

// echoVerified sends n pattern bytes to an echo target while reading them
// back, half-closes, and requires exactly those bytes and then EOF.
func echoVerified(c net.Conn, n int64, deadline time.Time) error {
	c.SetDeadline(deadline)
	werr := make(chan error, 1)
	go func() {
		_, err := io.CopyN(c, pattern(uint64(n)+7), n)
		if err == nil {
			err = c.(*tunnelConn).CloseWrite()
		}
		werr <- err
	}()
	if err := readPattern(c, uint64(n)+7, n); err != nil {
		return err
	}
	if m, err := io.Copy(io.Discard, c); err != nil || m != 0 {
		return fmt.Errorf("after the echo: %d more bytes, %v; want EOF", m, err)
	}
	return <-werr
}
