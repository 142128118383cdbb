package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
)

// NotifySocketEnv names the environment variable through which systemd
// passes the notification socket of a Type=notify service.
const NotifySocketEnv = "NOTIFY_SOCKET"

// Notify sends state (for example "READY=1" or "STOPPING=1"; several
// assignments are separated by newlines) to the service manager, following
// sd_notify(3): one datagram to the unix socket named by $NOTIFY_SOCKET. A
// leading '@' names a socket in the abstract namespace. Without
// $NOTIFY_SOCKET, as outside systemd, Notify does nothing and returns nil.
func Notify(state string) error {
	name := os.Getenv(NotifySocketEnv)
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("sd_notify: $%s=%q is neither a path nor an abstract socket (@name)", NotifySocketEnv, name)
	}
	if name[0] == '@' {
		name = "\x00" + name[1:] // the kernel's spelling of an abstract address
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: send %q: %w", state, err)
	}
	return nil
}

// NotifyLogged sends state with Notify and logs a failure as a warning: a
// service manager that cannot be told is no reason to stop serving.
func NotifyLogged(log *slog.Logger, state string) {
	if err := Notify(state); err != nil {
		log.Warn("service manager notification failed", "state", state, "err", err)
	}
}

// NotifyWhenDone sends state (usually "STOPPING=1") as soon as ctx ends,
// while the process winds down. The returned function, called once on the
// way out, cancels the notification if ctx has not ended, and otherwise
// waits until it has been sent.
func NotifyWhenDone(ctx context.Context, log *slog.Logger, state string) (wait func()) {
	sent := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(sent)
		NotifyLogged(log, state)
	})
	return func() {
		if !stop() {
			<-sent
		}
	}
}
