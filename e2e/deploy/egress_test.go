package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"
)

// egressKeyDir is where the egress selector files expect key material;
// validation wants the files to exist, so checks point it at a temporary
// directory holding empty files of the same names.
const egressKeyDir = "/etc/kubernetes/tunnel/"

// readEgress reads deploy/egress-selector/NAME strictly, the way
// kube-apiserver's --egress-selector-config-file is read, and validates it.
func readEgress(t *testing.T, rel string) *apiserver.EgressSelectorConfiguration {
	t.Helper()
	dir := t.TempDir()
	text := string(readDeploy(t, rel))
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		text = strings.ReplaceAll(text, egressKeyDir+f, filepath.Join(dir, f))
	}
	path := filepath.Join(dir, "egress.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := egressselector.ReadEgressSelectorConfiguration(path)
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	if errs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(errs) > 0 {
		t.Fatalf("%s: %v", rel, errs.ToAggregate())
	}
	return cfg
}

// clusterTransport returns the transport of the "cluster" egress selection,
// which must be HTTPConnect or (over a unix socket) GRPC.
func clusterTransport(t *testing.T, rel string, cfg *apiserver.EgressSelectorConfiguration) *apiserver.Transport {
	t.Helper()
	for _, s := range cfg.EgressSelections {
		if s.Name != "cluster" {
			continue
		}
		switch p, tr := s.Connection.ProxyProtocol, s.Connection.Transport; {
		case tr == nil:
			t.Fatalf("%s: cluster egress (%s) has no transport", rel, p)
		case p == apiserver.ProtocolGRPC && tr.UDS == nil:
			t.Fatalf("%s: cluster egress is GRPC, which tunnel-server serves only on a unix socket", rel)
		case p != apiserver.ProtocolHTTPConnect && p != apiserver.ProtocolGRPC:
			t.Fatalf("%s: cluster egress is %s, want HTTPConnect or GRPC", rel, p)
		}
		return s.Connection.Transport
	}
	t.Fatalf("%s: no cluster egress selection", rel)
	return nil
}

func TestEgressSelectorFilesDecodeStrictly(t *testing.T) {
	for _, rel := range deployFiles(t, "egress-selector", ".yaml") {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			tr := clusterTransport(t, rel, readEgress(t, rel))
			if tr.UDS == nil && tr.TCP == nil {
				t.Errorf("%s: cluster transport is neither uds nor tcp", rel)
			}
		})
	}
	// The reader must be strict, or the check above proves little.
	path := filepath.Join(t.TempDir(), "typo.yaml")
	typo := "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsPath: /x.sock\n"
	if err := os.WriteFile(path, []byte(typo), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := egressselector.ReadEgressSelectorConfiguration(path); err == nil {
		t.Error("ReadEgressSelectorConfiguration accepts an unknown field (udsPath)")
	}
}

// TestSocketPathsAgree requires every --uds-path in deploy/ to be the
// socket the unix-socket HTTPConnect EgressSelectorConfiguration names, and
// every --grpc-uds-path the GRPC one's, so that the files work together as
// shipped.
func TestSocketPathsAgree(t *testing.T) {
	if n := socketPathUses(t, "uds-path", "egress-selector/http-connect-uds.yaml"); n == 0 {
		t.Error("no server command line in deploy/ passes --uds-path")
	}
	socketPathUses(t, "grpc-uds-path", "egress-selector/grpc-uds.yaml") // optional
}

// socketPathUses checks every value of --flag in deploy/ against the
// udsName of the egress selector file rel, and returns how many it saw.
func socketPathUses(t *testing.T, flag, rel string) int {
	tr := clusterTransport(t, rel, readEgress(t, rel))
	if tr.UDS == nil {
		t.Fatalf("%s: cluster transport is not uds", rel)
	}
	n := 0
	for _, inv := range allInvocations(t) {
		if p, ok := flagValue(inv.args, flag); ok {
			n++
			if p != tr.UDS.UDSName {
				t.Errorf("%s: --%s=%s, but %s names %s", inv.where, flag, p, rel, tr.UDS.UDSName)
			}
		}
	}
	return n
}
