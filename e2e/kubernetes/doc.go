// Package kubernetes runs tunnel-server and tunnel-agent under a real
// kube-apiserver (built from k8s.io/kubernetes, pinned in tools/) and checks
// what kubectl does through the tunnel: logs, exec, attach, port-forward,
// the node, pod and service proxies, admission webhooks, aggregated APIs.
// See README.md.
package kubernetes
