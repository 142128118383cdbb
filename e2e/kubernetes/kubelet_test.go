//go:build linux

package kubernetes

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	utilexec "k8s.io/utils/exec"
)

// kubeletPort is the kubelet API's port (Node status daemonEndpoints).
const kubeletPort = 10250

// kubelet is the node's kubelet API: virtual-kubelet's node/api handlers,
// the ones a real kubelet serves for logs, exec, attach, port-forward and
// its pod list, served over HTTPS on the node IP's port 10250 inside the
// node namespace, requiring kube-apiserver's kubelet client certificate.
// Behind the handlers is a small provider of its own: each container's log
// is a buffer the test appends to (followers see appended lines at once),
// exec runs the real command on this machine with the streams attached,
// attach talks to an echo loop, and port-forward dials the pod's port
// inside the node namespace.
type kubelet struct {
	ns  netns
	srv *http.Server

	mu   sync.Mutex
	pods map[string]*fakePod // by namespace/name
}

// fakePod is a pod the kubelet runs: its object and its containers' logs.
type fakePod struct {
	pod  *corev1.Pod
	logs map[string]*logStream // by container
}

// startKubelet serves the kubelet API on addr inside ns with tlsCfg.
func startKubelet(t *testing.T, ns netns, addr string, tlsCfg *tls.Config) *kubelet {
	t.Helper()
	k := &kubelet{ns: ns, pods: make(map[string]*fakePod)}
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("kubelet listen %s in %s: %v", addr, ns, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.Handle("/", api.PodHandler(api.PodHandlerConfig{
		RunInContainer:        k.exec,
		AttachToContainer:     k.attach,
		PortForward:           k.portForward,
		GetContainerLogs:      k.containerLogs,
		GetPods:               k.listPods,
		GetPodsFromKubernetes: k.listPods,
		StreamIdleTimeout:     time.Minute,
		StreamCreationTimeout: time.Minute,
	}, true))
	k.srv = &http.Server{Handler: mux, TLSConfig: tlsCfg, ReadHeaderTimeout: time.Minute}
	go k.srv.ServeTLS(l, "", "")
	t.Cleanup(func() { k.srv.Close() })
	return k
}

// addPod makes the kubelet run pod, with each container's log starting as
// its initial text.
func (k *kubelet) addPod(pod *corev1.Pod, initial map[string]string) {
	fp := &fakePod{pod: pod, logs: make(map[string]*logStream)}
	for _, c := range pod.Spec.Containers {
		fp.logs[c.Name] = &logStream{changed: make(chan struct{})}
		fp.logs[c.Name].append(initial[c.Name])
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pods[pod.Namespace+"/"+pod.Name] = fp
}

// pod returns a pod the kubelet runs.
func (k *kubelet) pod(namespace, name string) (*fakePod, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fp, ok := k.pods[namespace+"/"+name]
	if !ok {
		return nil, fmt.Errorf("pod %s/%s not found on this node", namespace, name)
	}
	return fp, nil
}

// log returns a container's log stream.
func (k *kubelet) log(namespace, name, container string) (*logStream, error) {
	fp, err := k.pod(namespace, name)
	if err != nil {
		return nil, err
	}
	ls, ok := fp.logs[container]
	if !ok {
		return nil, fmt.Errorf("container %q not found in pod %s/%s", container, namespace, name)
	}
	return ls, nil
}

func (k *kubelet) listPods(context.Context) ([]*corev1.Pod, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var pods []*corev1.Pod
	for _, fp := range k.pods {
		pods = append(pods, fp.pod)
	}
	return pods, nil
}

func (k *kubelet) containerLogs(ctx context.Context, namespace, pod, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	ls, err := k.log(namespace, pod, container)
	if err != nil {
		return nil, err
	}
	return ls.reader(ctx, opts.Follow), nil
}

// exec runs cmd on this machine with the exec's streams; a non-zero exit
// reaches kubectl as its exit code.
func (k *kubelet) exec(ctx context.Context, namespace, pod, container string, cmd []string, attach api.AttachIO) error {
	if _, err := k.log(namespace, pod, container); err != nil {
		return err
	}
	if len(cmd) == 0 {
		return errors.New("no command")
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	if in := attach.Stdin(); in != nil {
		c.Stdin = in
	}
	if out := attach.Stdout(); out != nil {
		c.Stdout = out
	}
	if errOut := attach.Stderr(); errOut != nil {
		c.Stderr = errOut
	}
	c.WaitDelay = time.Second
	err := c.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		return utilexec.CodeExitError{Err: err, Code: exit.ExitCode()}
	}
	return err
}

// attach connects to the container's main process: an echo loop that
// greets, then answers each line of stdin with "echo: LINE" until stdin
// ends.
func (k *kubelet) attach(ctx context.Context, namespace, pod, container string, attach api.AttachIO) error {
	if _, err := k.log(namespace, pod, container); err != nil {
		return err
	}
	out := attach.Stdout()
	if out == nil {
		return errors.New("attach without stdout")
	}
	fmt.Fprintf(out, "attached to %s/%s\n", pod, container)
	in := attach.Stdin()
	if in == nil {
		<-ctx.Done()
		return nil
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if _, err := fmt.Fprintf(out, "echo: %s\n", sc.Text()); err != nil {
			return err
		}
	}
	return sc.Err()
}

// portForward dials the pod's port inside the node namespace and copies
// both ways until either side ends.
func (k *kubelet) portForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	fp, err := k.pod(namespace, pod)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(fp.pod.Status.PodIP, strconv.Itoa(int(port)))
	conn, err := k.ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("port-forward to %s: %w", addr, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(conn, stream); done <- struct{}{} }()
	go func() { io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// logStream is a container's log: appended to by the test, read by
// kubectl logs, followed by kubectl logs -f.
type logStream struct {
	mu      sync.Mutex
	data    []byte
	changed chan struct{} // closed and replaced on every append
}

// append adds text to the log and wakes its followers.
func (l *logStream) append(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.data = append(l.data, text...)
	close(l.changed)
	l.changed = make(chan struct{})
}

// String returns the whole log so far.
func (l *logStream) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.data)
}

// reader reads the log from its start; with follow it then waits for more
// until ctx ends, else it ends at the current end.
func (l *logStream) reader(ctx context.Context, follow bool) io.ReadCloser {
	return &logReader{l: l, ctx: ctx, follow: follow}
}

type logReader struct {
	l      *logStream
	ctx    context.Context
	follow bool
	off    int
}

func (r *logReader) Read(p []byte) (int, error) {
	for {
		r.l.mu.Lock()
		if r.off < len(r.l.data) {
			n := copy(p, r.l.data[r.off:])
			r.off += n
			r.l.mu.Unlock()
			return n, nil
		}
		changed := r.l.changed
		r.l.mu.Unlock()
		if !r.follow {
			return 0, io.EOF
		}
		select {
		case <-changed:
		case <-r.ctx.Done():
			return 0, io.EOF
		}
	}
}

func (r *logReader) Close() error { return nil }
