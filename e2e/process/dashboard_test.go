//go:build linux

package process

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The Grafana dashboard in deploy/grafana is checked against what the
// binaries export: every metric its queries name must be a series that real
// tunnel-server and tunnel-agent processes expose on /metrics after real
// traffic, every label value a query selects must occur, and every label a
// query groups by must exist on the series it aggregates. Names are taken
// from the queries, not from a list kept beside them.

// dashboardPath is the dashboard, relative to this package.
var dashboardPath = filepath.Join("..", "..", "deploy", "grafana", "tunnel-dashboard.json")

// dashboardFamilies are the metric families DESIGN.md section 6 and issue 4
// name; the dashboard must show each (a histogram through its _bucket
// series).
var dashboardFamilies = []string{
	"tunnel_server_agents_connected",
	"tunnel_server_agent_registrations_total",
	"tunnel_server_agent_rejections_total",
	"tunnel_server_streams_open",
	"tunnel_server_dials_total",
	"tunnel_server_dial_duration_seconds_bucket",
	"tunnel_server_bytes_total",
	"tunnel_server_frontend_requests_total",
	"tunnel_server_keepalive_rtt_seconds_bucket",
	"tunnel_agent_registered",
	"tunnel_agent_streams_open",
	"tunnel_agent_dials_total",
	"tunnel_agent_dial_duration_seconds_bucket",
	"tunnel_agent_bytes_total",
	"tunnel_agent_reconnects_total",
	"tunnel_agent_keepalive_rtt_seconds_bucket",
	"tunnel_build_info",
}

// targetLabels are attached by Prometheus when it scrapes, not exported.
var targetLabels = []string{"instance", "job"}

// dashQuery is one query of a dashboard panel.
type dashQuery struct {
	panel, expr string
}

// dashboardQueries returns every target expression of every panel,
// nested rows included.
func dashboardQueries(t *testing.T) []dashQuery {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string          `json:"uid"`
		Title  string          `json:"title"`
		Panels json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: no uid or title", dashboardPath)
	}
	var qs []dashQuery
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		var panels []struct {
			Title   string          `json:"title"`
			Panels  json.RawMessage `json:"panels"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		}
		if err := json.Unmarshal(raw, &panels); err != nil {
			t.Fatalf("%s: panels: %v", dashboardPath, err)
		}
		for _, p := range panels {
			for _, tg := range p.Targets {
				qs = append(qs, dashQuery{panel: p.Title, expr: tg.Expr})
			}
			if len(p.Panels) > 0 {
				walk(p.Panels)
			}
		}
	}
	walk(dash.Panels)
	if len(qs) == 0 {
		t.Fatalf("%s: no queries", dashboardPath)
	}
	return qs
}

// ---------------------------------------------------------------------------
// What a PromQL expression refers to.

// matcher is one label matcher of a selector: metric{label op "value"}.
type matcher struct {
	metric, label, op, value string
}

// queryRefs are the metrics, matchers and grouping labels of one query.
type queryRefs struct {
	metrics  []string
	matchers []matcher
	grouping []string
}

var (
	rangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?\s*`)
	labelsRE   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	stringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	identRE    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	varRE      = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
)

// promqlWords are PromQL's keywords that are not followed by "(".
var promqlWords = []string{"and", "or", "unless", "bool", "offset", "by", "without",
	"on", "ignoring", "group_left", "group_right", "inf", "nan", "Inf", "NaN"}

// parseQuery finds what expr refers to. It knows the PromQL our dashboard
// writes (selectors, functions, aggregations with by/without, vector
// matching), not the whole language: a name it cannot place is reported as
// a metric, so a misread fails the test instead of passing it.
func parseQuery(expr string) (queryRefs, error) {
	var r queryRefs
	e := rangeRE.ReplaceAllString(expr, "")
	var bad error
	e = selectorRE.ReplaceAllStringFunc(e, func(sel string) string {
		m := selectorRE.FindStringSubmatch(sel)
		if m[1] == "" {
			bad = fmt.Errorf("selector %q has no metric name", sel)
		}
		rest := matcherRE.ReplaceAllStringFunc(m[2], func(s string) string {
			mm := matcherRE.FindStringSubmatch(s)
			r.matchers = append(r.matchers, matcher{m[1], mm[1], mm[2], mm[3]})
			return ""
		})
		if strings.TrimSpace(rest) != "" {
			bad = fmt.Errorf("selector %q: cannot read matchers %q", sel, rest)
		}
		return " " + m[1] + " "
	})
	e = labelsRE.ReplaceAllStringFunc(e, func(s string) string {
		for _, l := range strings.Split(labelsRE.FindStringSubmatch(s)[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				r.grouping = append(r.grouping, l)
			}
		}
		return " "
	})
	e = varRE.ReplaceAllString(stringRE.ReplaceAllString(e, " "), " ")
	for _, loc := range identRE.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue // the exponent or unit of a number, as in 1e3
		}
		if strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") || slices.Contains(promqlWords, name) {
			continue // a function or an aggregation, or a keyword
		}
		r.metrics = append(r.metrics, name)
	}
	if len(r.metrics) == 0 && bad == nil {
		bad = fmt.Errorf("refers to no metric")
	}
	return r, bad
}

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		expr     string
		metrics  string
		matchers string
		grouping string
	}{
		{`histogram_quantile(0.99, sum by (le, stage) (rate(a_seconds_bucket{stage="connect"}[$__rate_interval])))`,
			"[a_seconds_bucket]", `[{a_seconds_bucket stage = connect}]`, "[le stage]"},
		{`sum(rate(x_total{result="ok", code=~"5.."}[5m])) / sum(rate(x_total[5m]))`,
			"[x_total x_total]", `[{x_total result = ok} {x_total code =~ 5..}]`, "[]"},
		{`count(up == 0) or vector(0)`, "[up]", "[]", "[]"},
		{`max by (instance) (p_bytes * on (instance, job) group_left b_info)`, "[p_bytes b_info]", "[]", "[instance instance job]"},
		{`topk(10, increase(r_total[1h]) > 0)`, "[r_total]", "[]", "[]"},
	} {
		r, err := parseQuery(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		got := fmt.Sprint(r.metrics) + " " + fmt.Sprint(r.matchers) + " " + fmt.Sprint(emptyIfNil(r.grouping))
		if want := tc.metrics + " " + tc.matchers + " " + tc.grouping; got != want {
			t.Errorf("%s:\n got  %s\n want %s", tc.expr, got, want)
		}
	}
	for _, bad := range []string{`sum(rate({__name__="x"}[1m]))`, `vector(1)`, `x{a=b}`} {
		if _, err := parseQuery(bad); err == nil {
			t.Errorf("parseQuery(%q) found nothing wrong", bad)
		}
	}
}

func emptyIfNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ---------------------------------------------------------------------------
// What the binaries export.

// series maps each sample name on /metrics to its samples, as Prometheus
// would store them (a histogram as _bucket, _sum and _count).
type series map[string][]sample

type sample struct {
	labels map[string]string
	value  float64
}

var (
	sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape fetches http://addr/metrics in the text format and adds its
// samples to s.
func (s series) scrape(t *testing.T, addr string) {
	t.Helper()
	c := &http.Client{Timeout: ioTimeout}
	res, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, res.Status)
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("scrape %s: cannot read %q", addr, line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("scrape %s: value of %q: %v", addr, line, err)
		}
		labels := map[string]string{}
		for _, l := range labelRE.FindAllStringSubmatch(m[2], -1) {
			labels[l[1]] = l[2]
		}
		s[m[1]] = append(s[m[1]], sample{labels, v})
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
}

// hasLabel reports whether a sample of metric has label (with a value
// accepted by ok).
func (s series) hasLabel(metric, label string, ok func(string) bool) bool {
	for _, smp := range s[metric] {
		if v, found := smp.labels[label]; found && ok(v) {
			return true
		}
	}
	return false
}

// count returns the number of metric's samples.
func (s series) count(metric string) int { return len(s[metric]) }

// sum returns the sum of metric's sample values.
func (s series) sum(metric string) float64 {
	var v float64
	for _, smp := range s[metric] {
		v += smp.value
	}
	return v
}

// adminAddrRE matches the admin listener's line.
var adminAddrRE = regexp.MustCompile(`msg=listening listener=admin addr=(\S+)`)

// keepaliveFlags make both ends ping often enough to be seen in a test.
var keepaliveFlags = []string{"--keepalive-interval=100ms", "--keepalive-timeout=5s"}

// scrapeAfterTraffic runs a server and an agent, sends traffic that ends
// in each kind of result the dashboard shows (a verified echo, a refused
// dial, a node without agent, a malformed request, a rejected agent), waits
// for keepalive round trips on both ends, and returns both scrapes.
func scrapeAfterTraffic(t *testing.T) series {
	t.Helper()
	srv := startServer(t, loopbackCerts(t), serverOpts{extra: keepaliveFlags})
	agent := startAgent(t, srv, agentOpts{node: nodeA, nodeIPs: []string{nodeAIP}, extra: keepaliveFlags})
	agentAdmin := agent.waitLog(t, adminAddrRE, startTimeout)[1]

	dial := udsDialer(srv.udsPath)
	checkEcho(t, mustConnect(t, dial, startTarget(t, nodeAIP, serveEcho)), 64<<10)
	for _, dest := range []string{closedPort(t, nodeAIP), nodeBIP + ":10250"} {
		if c, status := connectStatus(t, dial, dest); statusCode(status) != 502 {
			t.Errorf("CONNECT %s: %q, want 502", dest, status)
		} else {
			c.Close()
		}
	}
	if c, _, err := request(dial(t), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
		c.Close()
	}
	startProc(t, "tunnel-agent (rejected)", nil, agentArgv(srv, agentOpts{node: nodeB, certNode: nodeA})...)
	srv.waitLog(t, rejectionRE, startTimeout)

	var s series
	eventually(t, startTimeout, func() (bool, string) {
		s = series{}
		s.scrape(t, srv.adminAddr)
		s.scrape(t, agentAdmin)
		for _, h := range []string{"tunnel_server_keepalive_rtt_seconds_count", "tunnel_agent_keepalive_rtt_seconds_count"} {
			if s.sum(h) == 0 {
				return false, h + " has no observation yet"
			}
		}
		return true, ""
	})
	return s
}

func TestDashboardMetricsAreExported(t *testing.T) {
	t.Parallel()
	queries := dashboardQueries(t)
	s := scrapeAfterTraffic(t)
	used := map[string]bool{}
	for _, q := range queries {
		r, err := parseQuery(q.expr)
		if err != nil {
			t.Errorf("panel %q: %s: %v", q.panel, q.expr, err)
			continue
		}
		for _, m := range r.metrics {
			used[m] = true
			if s.count(m) == 0 {
				t.Errorf("panel %q: %s is not exported by tunnel-server or tunnel-agent", q.panel, m)
			}
		}
		for _, m := range r.matchers {
			checkMatcher(t, s, q.panel, m)
		}
		for _, l := range r.grouping {
			if slices.Contains(targetLabels, l) {
				continue
			}
			found := false
			for _, m := range r.metrics {
				found = found || s.hasLabel(m, l, func(string) bool { return true })
			}
			if !found {
				t.Errorf("panel %q: groups by %q, which no series of %v carries: %s", q.panel, l, r.metrics, q.expr)
			}
		}
	}
	for _, f := range dashboardFamilies {
		if !used[f] {
			t.Errorf("the dashboard shows no %s", f)
		}
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d queries over %d exported series: %s", len(queries), len(names), strings.Join(names, " "))
}

// checkMatcher requires an equality matcher's value to occur on the metric
// (a typo would leave the panel empty forever) and a regexp matcher's label
// to exist and match some value.
func checkMatcher(t *testing.T, s series, panel string, m matcher) {
	t.Helper()
	if strings.Contains(m.value, "$") {
		return // a dashboard variable, chosen at view time
	}
	var ok func(string) bool
	switch m.op {
	case "=":
		ok = func(v string) bool { return v == m.value }
	case "=~":
		re, err := regexp.Compile("^(?:" + m.value + ")$")
		if err != nil {
			t.Errorf("panel %q: %s{%s=~%q}: %v", panel, m.metric, m.label, m.value, err)
			return
		}
		ok = re.MatchString
	default:
		ok = func(string) bool { return true }
	}
	if !s.hasLabel(m.metric, m.label, ok) {
		t.Errorf("panel %q: %s{%s%s%q} matches no exported series", panel, m.metric, m.label, m.op, m.value)
	}
}
