package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listenNotify opens a unixgram socket the way systemd does for a
// Type=notify service and returns the $NOTIFY_SOCKET value that names it.
func listenNotify(t *testing.T, abstract bool) (*net.UnixConn, string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify.sock")
	if abstract {
		name = fmt.Sprintf("@tunnel-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, name
}

// readNotify returns the next datagram on conn.
func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	for _, tc := range []struct {
		name     string
		abstract bool
	}{{"path", false}, {"abstract", true}} {
		t.Run(tc.name, func(t *testing.T) {
			conn, name := listenNotify(t, tc.abstract)
			t.Setenv(NotifySocketEnv, name)
			for _, state := range []string{"READY=1", "STATUS=registered\nREADY=1", "STOPPING=1"} {
				if err := Notify(state); err != nil {
					t.Fatalf("Notify(%q): %v", state, err)
				}
				if got := readNotify(t, conn); got != state {
					t.Fatalf("socket got %q, want %q", got, state)
				}
			}
		})
	}
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	t.Setenv(NotifySocketEnv, "")
	if err := Notify("READY=1"); err != nil {
		t.Fatalf("Notify without $%s: %v", NotifySocketEnv, err)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, value := range []string{
		"relative/notify.sock",                            // neither a path nor @name
		filepath.Join(t.TempDir(), "nobody-listens.sock"), // no socket there
	} {
		t.Setenv(NotifySocketEnv, value)
		err := Notify("READY=1")
		if err == nil || !strings.HasPrefix(err.Error(), "sd_notify: ") {
			t.Errorf("$%s=%q: err = %v, want an sd_notify error", NotifySocketEnv, value, err)
		}
	}
}

func TestNotifyWhenDone(t *testing.T) {
	conn, name := listenNotify(t, false)
	t.Setenv(NotifySocketEnv, name)
	log := slog.New(slog.DiscardHandler)

	ctx, cancel := context.WithCancel(context.Background())
	wait := NotifyWhenDone(ctx, log, "STOPPING=1")
	cancel()
	wait() // returns only once the datagram is sent
	if got := readNotify(t, conn); got != "STOPPING=1" {
		t.Fatalf("socket got %q, want STOPPING=1", got)
	}

	ctx, cancel = context.WithCancel(context.Background())
	NotifyWhenDone(ctx, log, "STOPPING=1")() // canceled before ctx ends
	cancel()
	if err := conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Read(make([]byte, 64)); err == nil {
		t.Fatalf("canceled notification was sent anyway (%d bytes)", n)
	}
}
