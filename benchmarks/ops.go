package benchmarks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// IOGrace is how long past its planned end an operation may wait for the
// peer (the sink's result, a blocked write) before it fails as stuck.
const IOGrace = 30 * time.Second

// slowest is how long n bytes may take before a transfer counts as stuck:
// 100 ns a byte, 10 MB/s.
func slowest(n int64) time.Duration {
	return time.Duration(min(n, 1<<40)) * 100 * time.Nanosecond
}

// Open dials d and sends h, leaving the connection in h.Mode. With extra,
// those bytes go out in the same write as the header (an echo payload).
func Open(ctx context.Context, d Dialer, h Header, extra []byte) (net.Conn, error) {
	c, err := d.Dial(ctx)
	if err != nil {
		return nil, err
	}
	c.SetWriteDeadline(time.Now().Add(IOGrace))
	if _, err := c.Write(append(h.Append(nil), extra...)); err != nil {
		c.Close()
		return nil, fmt.Errorf("benchmarks: sending header: %w", err)
	}
	c.SetWriteDeadline(time.Time{})
	return c, nil
}

// Echo writes msg on an echo connection and reads the same bytes back into
// buf (len(buf) >= len(msg)) within timeout; any difference is a
// *MismatchError.
func Echo(c net.Conn, msg, buf []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("benchmarks: echo write: %w", err)
	}
	return ReadEcho(c, msg, buf)
}

// ReadEcho reads len(msg) bytes into buf and checks that they are msg. The
// caller sets the deadline.
func ReadEcho(c net.Conn, msg, buf []byte) error {
	got := buf[:len(msg)]
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("benchmarks: echo read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return &MismatchError{Offset: firstDiff(got, msg), What: "echo"}
	}
	return nil
}

// Upload writes the pattern stream p on a sink connection in writes of
// chunk bytes until the time until, half-closes, and waits for the sink's
// verdict. It returns the bytes the sink confirmed.
func Upload(c net.Conn, p *Pattern, chunk int, until time.Time) (int64, error) {
	next := func(int64) int {
		if time.Now().Before(until) {
			return chunk
		}
		return 0
	}
	return upload(c, p, next, until)
}

// UploadN is Upload for exactly n bytes.
func UploadN(c net.Conn, p *Pattern, chunk int, n int64) (int64, error) {
	return upload(c, p, func(sent int64) int { return int(min(int64(chunk), n-sent)) }, time.Now().Add(slowest(n)))
}

// upload writes next(sent) bytes at a time until next says 0.
func upload(c net.Conn, p *Pattern, next func(sent int64) int, end time.Time) (int64, error) {
	c.SetDeadline(end.Add(IOGrace))
	var sent int64
	for size := next(0); size > 0; size = next(sent) {
		n, err := c.Write(p.At(sent, size))
		sent += int64(n)
		if err != nil {
			return sent, fmt.Errorf("benchmarks: upload write after %d bytes: %w", sent, err)
		}
	}
	if err := closeWrite(c); err != nil {
		return sent, fmt.Errorf("benchmarks: upload half-close: %w", err)
	}
	c.SetDeadline(time.Now().Add(IOGrace))
	var rb [SinkResultLen]byte
	if _, err := io.ReadFull(c, rb[:]); err != nil {
		return sent, fmt.Errorf("benchmarks: reading the sink's result after %d bytes: %w", sent, err)
	}
	return sent, checkSinkResult(parseSinkResult(rb[:]), sent)
}

func checkSinkResult(r SinkResult, sent int64) error {
	if r.Mismatch >= 0 {
		return &MismatchError{Offset: r.Mismatch, What: "upload, checked by the sink"}
	}
	if r.Received != sent {
		return fmt.Errorf("benchmarks: upload: sent %d bytes, the sink received %d", sent, r.Received)
	}
	return nil
}

// Download reads and verifies the pattern stream p from a source
// connection until the time until, into buf. It returns the verified
// bytes. It does not close c: the caller does, which ends the source.
func Download(c net.Conn, p *Pattern, buf []byte, until time.Time) (int64, error) {
	c.SetReadDeadline(until.Add(IOGrace))
	v := NewVerifier(p)
	for time.Now().Before(until) {
		n, err := c.Read(buf)
		if cerr := v.Check(buf[:n]); cerr != nil {
			return v.Count(), cerr
		}
		if err != nil {
			return v.Count(), fmt.Errorf("benchmarks: download read after %d bytes: %w", v.Count(), err)
		}
	}
	return v.Count(), nil
}

// DownloadN reads and verifies exactly n bytes and then expects EOF.
func DownloadN(c net.Conn, p *Pattern, buf []byte, n int64) error {
	c.SetReadDeadline(time.Now().Add(IOGrace + slowest(n)))
	v := NewVerifier(p)
	for v.Count() < n {
		m, err := c.Read(buf[:min(int64(len(buf)), n-v.Count())])
		if cerr := v.Check(buf[:m]); cerr != nil {
			return cerr
		}
		if err != nil {
			return fmt.Errorf("benchmarks: download read after %d of %d bytes: %w", v.Count(), n, err)
		}
	}
	if m, err := c.Read(buf[:1]); m != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("benchmarks: download: want EOF after %d bytes, got %d more bytes (err %v)", n, m, err)
	}
	return nil
}
