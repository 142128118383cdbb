package admin

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Set at link time to override what the Go toolchain records, e.g.
//
//	go build -ldflags "-X github.com/tunnel-project/tunnel/cmd/internal/admin.version=v1.2.0 \
//	    -X github.com/tunnel-project/tunnel/cmd/internal/admin.commit=$(git rev-parse HEAD)"
var version, commit string

// BuildInfo says which build of the binaries is running; it is the
// tunnel_build_info metric and the output of --version.
type BuildInfo struct {
	Version   string // release version, or "devel"
	Commit    string // VCS revision, with "-dirty" for uncommitted changes, or "unknown"
	GoVersion string // the toolchain that built the binary
}

// Build returns the running binary's build info: the -ldflags values if
// set, else what the toolchain recorded (module version, vcs.revision),
// else "devel" and "unknown".
func Build() BuildInfo {
	b := BuildInfo{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		if b.Commit == "" {
			b.Commit = vcsRevision(bi.Settings)
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func vcsRevision(settings []debug.BuildSetting) string {
	var rev, dirty string
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}

// String formats b for --version.
func (b BuildInfo) String() string {
	return fmt.Sprintf("version %s, commit %s, %s", b.Version, b.Commit, b.GoVersion)
}

// collector returns the constant tunnel_build_info{version,commit,go_version} 1.
func (b BuildInfo) collector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "tunnel_build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "go_version": b.GoVersion},
	}, func() float64 { return 1 })
}

// NewRegistry returns a registry holding the standard Go runtime and process
// collectors and tunnel_build_info; the binary registers its Server's or
// Agent's metrics on it and serves it on /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		Build().collector(),
	)
	return reg
}
