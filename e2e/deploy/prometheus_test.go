package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deploy/prometheus checked by Debian's promtool: the rules load, their unit
// tests (tunnel-rules.test.yaml) fire every alert, and the example
// configuration loads; every metric the rules name is one real processes
// export, and the scrape jobs select the pods the manifests run.

const (
	rulesFile     = "prometheus/tunnel-rules.yaml"
	rulesTestFile = "prometheus/tunnel-rules.test.yaml"
	configFile    = "prometheus/prometheus.yaml"
)

// promtool returns promtool's path, or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
	}
	return p
}

func TestPrometheusRules(t *testing.T) {
	pt := promtool(t)
	for _, argv := range [][]string{
		{pt, "check", "rules", filepath.Join(deployDir, rulesFile)},
		{pt, "test", "rules", filepath.Join(deployDir, rulesTestFile)},
	} {
		out, code := runIn(t, filepath.Join(deployDir, "prometheus"), argv...)
		if code != 0 {
			t.Errorf("promtool %s %s: exit %d\n%s", argv[1], argv[2], code, out)
		}
	}
	// Every alert has a unit test.
	test := string(readDeploy(t, rulesTestFile))
	for _, r := range ruleList(t) {
		if r.Alert != "" && !strings.Contains(test, "alertname: "+r.Alert+"\n") {
			t.Errorf("alert %s has no test in %s", r.Alert, rulesTestFile)
		}
	}
}

// rule is one rule of tunnel-rules.yaml.
type rule struct {
	Alert string `json:"alert"`
	Expr  string `json:"expr"`
}

func ruleList(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct{ Rules []rule } `json:"groups"`
	}
	if err := yaml.Unmarshal(readDeploy(t, rulesFile), &f); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var rs []rule
	for _, g := range f.Groups {
		rs = append(rs, g.Rules...)
	}
	if len(rs) == 0 {
		t.Fatalf("%s: no rules", rulesFile)
	}
	return rs
}

var (
	ourMetricRE = regexp.MustCompile(`\btunnel_[a-z0-9_]+`)
	byRE        = regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
)

// TestPrometheusRulesMetricsExported runs a server and an agent built from
// this tree, sends a CONNECT, and requires each tunnel_* series the rules
// read to be on their /metrics, with each label the rules group by.
func TestPrometheusRulesMetricsExported(t *testing.T) {
	p := startPair(t, binDir)
	p.connectEcho(t)
	s := p.scrapeBoth(t)
	for _, r := range ruleList(t) {
		metrics := ourMetricRE.FindAllString(r.Expr, -1)
		for _, m := range metrics {
			if len(s[m]) == 0 {
				t.Errorf("alert %s reads %s, which neither binary exports", r.Alert, m)
			}
		}
		for _, by := range byRE.FindAllStringSubmatch(r.Expr, -1) {
			for _, l := range strings.Split(by[1], ",") {
				l = strings.TrimSpace(l)
				if l == "job" || l == "instance" {
					continue // target labels, added by Prometheus
				}
				if !slices.ContainsFunc(metrics, func(m string) bool {
					return slices.ContainsFunc(s[m], func(ls string) bool { return strings.Contains(ls, l+`="`) })
				}) {
					t.Errorf("alert %s groups by %s, which no series of %v carries", r.Alert, l, metrics)
				}
			}
		}
	}
}

// TestPrometheusConfig loads the example configuration with promtool and
// requires each scrape job's pod selection to match a workload of the
// manifests on its port "admin".
func TestPrometheusConfig(t *testing.T) {
	pt := promtool(t)
	dir := filepath.Join(deployDir, "prometheus")
	out, code := runIn(t, dir, pt, "check", "config", filepath.Base(configFile))
	if code != 0 && strings.Contains(out, "field kubernetes_sd_configs not found") {
		// Debian builds Prometheus without Kubernetes discovery: check
		// the rest of the file with static targets in its place.
		t.Log("this promtool has no kubernetes_sd_configs (Debian's build); checking the file with static_configs in their place")
		out, code = runIn(t, withoutKubernetesSD(t), pt, "check", "config", filepath.Base(configFile))
	}
	if code != 0 {
		t.Fatalf("promtool check config %s: exit %d\n%s", configFile, code, out)
	}
	for job, wantLabel := range map[string]string{"tunnel-server": "component", "tunnel-agent": "k8s-app"} {
		checkScrapeJob(t, job, wantLabel)
	}
}

// scrapeConfig is the part of prometheus.yaml this test reads.
type scrapeConfig struct {
	JobName        string `json:"job_name"`
	RelabelConfigs []struct {
		SourceLabels []string `json:"source_labels"`
		Regex        string   `json:"regex"`
		Action       string   `json:"action"`
	} `json:"relabel_configs"`
}

func scrapeConfigs(t *testing.T) []scrapeConfig {
	var cfg struct {
		ScrapeConfigs []scrapeConfig `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readDeploy(t, configFile), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.ScrapeConfigs
}

// withoutKubernetesSD writes the configuration and the rules to a
// temporary directory, each kubernetes_sd_configs replaced by a static
// target, and returns the directory.
func withoutKubernetesSD(t *testing.T) string {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(readDeploy(t, configFile), &cfg); err != nil {
		t.Fatal(err)
	}
	jobs, _ := cfg["scrape_configs"].([]any)
	for _, j := range jobs {
		if job, ok := j.(map[string]any); ok && job["kubernetes_sd_configs"] != nil {
			delete(job, "kubernetes_sd_configs")
			job["static_configs"] = []any{map[string]any{"targets": []any{"127.0.0.1:8133"}}}
		}
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{filepath.Base(configFile): data, filepath.Base(rulesFile): readDeploy(t, rulesFile)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// promLabel is a Kubernetes label's name in discovery meta labels.
func promLabel(k string) string {
	return "__meta_kubernetes_pod_label_" + regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(k, "_")
}

// checkScrapeJob requires the job to keep pods by label (a pod label and
// the container port name) and the manifests to run a pod of ours with that
// label value and port.
func checkScrapeJob(t *testing.T, job, label string) {
	t.Helper()
	idx := slices.IndexFunc(scrapeConfigs(t), func(c scrapeConfig) bool { return c.JobName == job })
	if idx < 0 {
		t.Errorf("%s: no job %s (tunnel-rules.yaml and the dashboard expect it)", configFile, job)
		return
	}
	var value, port string
	for _, r := range scrapeConfigs(t)[idx].RelabelConfigs {
		if r.Action == "keep" && slices.Equal(r.SourceLabels, []string{promLabel(label), "__meta_kubernetes_pod_container_port_name"}) {
			value, port, _ = strings.Cut(r.Regex, ";")
		}
	}
	if value == "" {
		t.Errorf("job %s: no keep rule on [%s, __meta_kubernetes_pod_container_port_name]", job, promLabel(label))
		return
	}
	for _, m := range loadManifests(t) {
		spec, podLabels, ok := podSpec(m.obj)
		if !ok || podLabels[label] != value {
			continue
		}
		for _, c := range spec.Containers {
			if slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port }) {
				return
			}
		}
	}
	t.Errorf("job %s keeps pods labelled %s=%s on port %q; no manifest runs one", job, label, value, port)
}
