// Package e2e holds the process-level conformance tests of tunnel-server and
// tunnel-agent against the real kube-apiserver egress selector client.
//
// The tests build the two binaries from the parent module, start them on
// loopback with quick-start certificates, and dial through them with
// k8s.io/apiserver/pkg/server/egressselector configured from
// EgressSelectorConfiguration files, loaded the way kube-apiserver loads its
// --egress-selector-config-file. It is a module of its own so that the main
// module does not depend on k8s.io/apiserver.
package e2e
