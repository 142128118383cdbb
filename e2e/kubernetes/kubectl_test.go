//go:build linux

package kubernetes

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// kubectlArgv is the command line of kubectl run as the admin inside the
// control-plane namespace.
func (c *cluster) kubectlArgv(args ...string) []string {
	return c.tp.cp.wrap(append([]string{bins.kubectl, "--kubeconfig", c.admin}, args...)...)
}

// kubectlIO runs kubectl with stdin and stdout attached and returns its
// stderr; err is an *exec.ExitError for a non-zero exit.
func (c *cluster) kubectlIO(t *testing.T, stdin io.Reader, stdout io.Writer, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	argv := c.kubectlArgv(args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kubectl %s did not finish within %s; stderr:\n%s", strings.Join(args, " "), kubectlTimeout, stderr.String())
	}
	return stderr.String(), err
}

// kubectl runs kubectl and returns its stdout, or its stderr with the error.
func (c *cluster) kubectl(t *testing.T, stdin io.Reader, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	stderr, err := c.kubectlIO(t, stdin, &out, args...)
	if err != nil {
		return stderr, err
	}
	return out.String(), nil
}

// mustKubectl runs kubectl and fails the test unless it succeeds.
func (c *cluster) mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.kubectl(t, nil, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// startKubectl runs a long-lived kubectl (logs -f, port-forward).
func (c *cluster) startKubectl(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProc(t, "kubectl "+strings.Join(args, " "), c.kubectlArgv(args...)...)
}

// kubectlChecks runs every kubectl check against pod web, node-1 and
// Service web; each one crosses the tunnel.
func (c *cluster) kubectlChecks(t *testing.T) {
	t.Run("logs", c.checkLogs)
	t.Run("logs -f", c.checkLogsFollow)
	t.Run("exec stdin 8MiB", c.checkExecStdin)
	t.Run("exec exit code", c.checkExecExitCode)
	t.Run("attach", c.checkAttach)
	t.Run("port-forward", c.checkPortForward)
	t.Run("node proxy", c.checkNodeProxy)
	t.Run("pod proxy", c.checkPodProxy)
	t.Run("service proxy", c.checkServiceProxy)
}

func (c *cluster) checkLogs(t *testing.T) {
	if got, want := c.mustKubectl(t, "logs", webName, "-c", webContainer), c.webLog(t); got != want {
		t.Fatalf("kubectl logs = %q, want %q", got, want)
	}
}

// webLog returns pod web's log as the kubelet has it now.
func (c *cluster) webLog(t *testing.T) string {
	t.Helper()
	ls, err := c.kubelet.log(namespace, webName, webContainer)
	if err != nil {
		t.Fatal(err)
	}
	return ls.String()
}

// checkLogsFollow appends a line after kubectl logs -f has shown the log,
// and waits for it to arrive.
func (c *cluster) checkLogsFollow(t *testing.T) {
	follow := c.startKubectl(t, "logs", "-f", webName, "-c", webContainer)
	follow.waitLog(t, regexp.MustCompile(`web: line 3\n`), kubectlTimeout)
	ls, err := c.kubelet.log(namespace, webName, webContainer)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		line := fmt.Sprintf("web: appended %d at %s", i, time.Now().Format(time.RFC3339Nano))
		start := time.Now()
		ls.append(line + "\n")
		follow.waitLog(t, regexp.MustCompile(regexp.QuoteMeta(line)), kubectlTimeout)
		t.Logf("appended line seen by kubectl logs -f after %s", time.Since(start).Round(time.Millisecond))
	}
	if follow.exited() {
		t.Fatalf("kubectl logs -f ended: %v", follow.err)
	}
}

// checkExecStdin pipes 8 MiB of random bytes through `cat` in the pod:
// 8 MiB up and 8 MiB down, compared by SHA-256.
func (c *cluster) checkExecStdin(t *testing.T) {
	const size = 8 << 20
	data := make([]byte, size)
	rand.Read(data)
	var out bytes.Buffer
	start := time.Now()
	stderr, err := c.kubectlIO(t, bytes.NewReader(data), &out, "exec", "-i", webName, "-c", webContainer, "--", "cat")
	if err != nil {
		t.Fatalf("kubectl exec -i cat: %v\n%s", err, stderr)
	}
	if out.Len() != size || sha256.Sum256(out.Bytes()) != sha256.Sum256(data) {
		t.Fatalf("kubectl exec -i cat returned %d bytes, want the %d sent (SHA-256 differs)", out.Len(), size)
	}
	t.Logf("8 MiB up and back through kubectl exec in %s", time.Since(start).Round(time.Millisecond))
}

// checkExecExitCode checks the command's stdout, stderr and exit code.
func (c *cluster) checkExecExitCode(t *testing.T) {
	var out bytes.Buffer
	stderr, err := c.kubectlIO(t, nil, &out, "exec", webName, "-c", webContainer, "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("kubectl exec ... exit 3: err %v, want exit code 3; stderr:\n%s", err, stderr)
	}
	if out.String() != "to-stdout\n" || !strings.Contains(stderr, "to-stderr\n") {
		t.Fatalf("kubectl exec: stdout %q, stderr %q", out.String(), stderr)
	}
}

// checkAttach attaches to the container's echo loop with stdin.
func (c *cluster) checkAttach(t *testing.T) {
	out, err := c.kubectl(t, strings.NewReader("hello\nworld\n"), "attach", "-i", webName, "-c", webContainer)
	if err != nil {
		t.Fatalf("kubectl attach -i: %v\n%s", err, out)
	}
	for _, want := range []string{"attached to web/app\n", "echo: hello\n", "echo: world\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("kubectl attach -i output %q lacks %q", out, want)
		}
	}
}

// portForwardRE matches kubectl port-forward's line naming its local port.
var portForwardRE = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> \d+`)

// checkPortForward forwards a local port to the pod's echo port and sends
// 4 MiB through each of two connections.
func (c *cluster) checkPortForward(t *testing.T) {
	pf := c.startKubectl(t, "port-forward", "--address", "127.0.0.1", "pod/"+webName, fmt.Sprintf(":%d", echoPort))
	port := pf.waitLog(t, portForwardRE, kubectlTimeout)[1]
	for i := range 2 {
		conn, err := c.tp.cp.DialContext(t.Context(), "tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("dial kubectl port-forward's port %s: %v", port, err)
		}
		start := time.Now()
		checkEcho(t, conn, 4<<20)
		t.Logf("connection %d: 4 MiB echoed through kubectl port-forward in %s", i, time.Since(start).Round(time.Millisecond))
	}
}

// checkEcho writes size random bytes to conn while reading them back, and
// compares; it closes conn.
func checkEcho(t *testing.T, conn io.ReadWriteCloser, size int) {
	t.Helper()
	defer conn.Close()
	data := make([]byte, size)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		errc <- err
	}()
	got := make([]byte, size)
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(conn, got)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read echo: %v", err)
		}
	case <-time.After(kubectlTimeout):
		t.Fatalf("echo of %d bytes not back within %s", size, kubectlTimeout)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echoed bytes differ from the %d sent", size)
	}
}

func (c *cluster) checkNodeProxy(t *testing.T) {
	if got := c.mustKubectl(t, "get", "--raw", "/api/v1/nodes/"+nodeName+"/proxy/healthz"); got != "ok" {
		t.Fatalf("node proxy /healthz = %q, want ok", got)
	}
	if got := c.mustKubectl(t, "get", "--raw", "/api/v1/nodes/"+nodeName+"/proxy/pods"); !strings.Contains(got, `"name":"web"`) {
		t.Fatalf("node proxy /pods lacks pod web: %.300s", got)
	}
}

func (c *cluster) checkPodProxy(t *testing.T) {
	path := fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:%d/proxy/hello", namespace, webName, httpPort)
	if got, want := c.mustKubectl(t, "get", "--raw", path), "pod web: GET /hello"; got != want {
		t.Fatalf("pod proxy = %q, want %q", got, want)
	}
}

func (c *cluster) checkServiceProxy(t *testing.T) {
	path := fmt.Sprintf("/api/v1/namespaces/%s/services/%s:http/proxy/hello", namespace, webName)
	if got, want := c.mustKubectl(t, "get", "--raw", path), "pod web: GET /hello"; got != want {
		t.Fatalf("service proxy = %q, want %q", got, want)
	}
}
