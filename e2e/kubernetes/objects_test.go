//go:build linux

package kubernetes

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The pod every cluster runs, and the Service in front of it.
const (
	webPod       = 10 // the pod's address: the 10th of the pod range
	webName      = "web"
	webContainer = "app"
	webService   = 10 // the Service's ClusterIP: the 10th of the service range
	namespace    = "default"
)

// webLog is the pod's log as kubectl logs must show it.
const webLog = "web: line 1\nweb: line 2\nweb: line 3\n"

// startNode starts the node side inside the node namespace: the kubelet
// API on the node IP, and pod web's address with an echo and an HTTP
// server.
func (c *cluster) startNode(t *testing.T) {
	t.Helper()
	tp := c.tp
	c.kubelet = startKubelet(t, tp.node, hostPort(tp.nodeIP, kubeletPort), c.pki.serverTLS(t, "kubelet", true))
	ip := tp.podIP(webPod)
	tp.addNodeAddr(t, ip)
	serveEcho(t, tp.node, hostPort(ip, echoPort))
	serveHTTP(t, tp.node, hostPort(ip, httpPort), nil, podHandler(webName))
}

// createObjects creates the Node, pod web (running, with its IP) and
// Service web with its EndpointSlice, and applies the project's RBAC for
// tunnel-server's --kubeconfig.
func (c *cluster) createObjects(t *testing.T) {
	t.Helper()
	c.createNode(t)
	pod := c.createPod(t, webName, c.tp.podIP(webPod))
	c.kubelet.addPod(pod, map[string]string{webContainer: webLog})
	c.createService(t, webName, c.tp.serviceIP(webService), 80, httpPort, c.tp.podIP(webPod))
	rbac := filepath.Join("..", "..", "deploy", "kubernetes", "base", "tunnel-server-rbac.yaml")
	if out, err := c.kubectl(t, nil, "apply", "-f", rbac); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", rbac, err, out)
	}
}

// createNode registers the Node as its kubelet would: InternalIP and
// Hostname addresses, the kubelet's port, the pod range, Ready.
func (c *cluster) createNode(t *testing.T) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
		Spec:       corev1.NodeSpec{PodCIDR: c.tp.podCIDR.String(), PodCIDRs: []string{c.tp.podCIDR.String()}},
	}
	node, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	node.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: c.tp.nodeIP.String()},
			{Type: corev1.NodeHostName, Address: nodeName},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: kubeletPort}},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}},
		NodeInfo: corev1.NodeSystemInfo{KubeletVersion: bins.kubeVersion, OperatingSystem: "linux", Architecture: "amd64"},
	}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update node status: %v", err)
	}
}

// createPod creates a pod bound to the node with one container, and sets
// its status as the kubelet would once it runs at ip.
func (c *cluster) createPod(t *testing.T, name string, ip netip.Addr) *corev1.Pod {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:   nodeName,
			Containers: []corev1.Container{{Name: webContainer, Image: "registry.invalid/" + name}},
		},
	}
	pod, err := c.client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		HostIP: c.tp.nodeIP.String(), StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: webContainer, Ready: true, Image: pod.Spec.Containers[0].Image,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	if pod, err = c.client.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update pod %s status: %v", name, err)
	}
	return pod
}

// createService creates a selector-less Service name with clusterIP:port
// and an EndpointSlice sending it to endpoint:targetPort (kube-apiserver's
// service proxy and --enable-aggregator-routing read EndpointSlices).
func (c *cluster) createService(t *testing.T, name string, clusterIP netip.Addr, port, targetPort int, endpoint netip.Addr) {
	t.Helper()
	ctx, cancel := callCtx(t)
	defer cancel()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP.String(), ClusterIPs: []string{clusterIP.String()},
			Ports: []corev1.ServicePort{{Name: "http", Port: int32(port), TargetPort: intstr.FromInt32(int32(targetPort)), Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := c.client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	family := discoveryv1.AddressTypeIPv4
	if endpoint.Is6() {
		family = discoveryv1.AddressTypeIPv6
	}
	ready, tcp, portName, p := true, corev1.ProtocolTCP, "http", int32(targetPort)
	node := nodeName
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: name + "-1", Namespace: namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "tunnel-e2e"},
		},
		AddressType: family,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{endpoint.String()}, NodeName: &node,
			// kube-apiserver's service proxy skips endpoints without one.
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: name},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &p, Protocol: &tcp}},
	}
	if _, err := c.client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create endpointslice for %s: %v", name, err)
	}
}

// serviceHost is the DNS name a Service's serving certificate carries.
func serviceHost(name string) string { return fmt.Sprintf("%s.%s.svc", name, namespace) }

// trimLines trims trailing newlines for comparisons of command output.
func trimLines(s string) string { return strings.TrimRight(s, "\n") }
