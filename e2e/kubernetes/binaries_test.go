//go:build linux

package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Bounds on the builds TestMain runs.
const (
	// coldBuildTimeout bounds building kube-apiserver, kubectl and etcd from
	// an empty build cache: 20–40 minutes on two cores.
	coldBuildTimeout = 60 * time.Minute
	// tunnelBuildTimeout bounds building tunnel-server and tunnel-agent.
	tunnelBuildTimeout = 10 * time.Minute
)

// cacheEnv names the directory the Kubernetes binaries are cached in,
// default $HOME/.cache/tunnel-kubernetes. Binaries live in a subdirectory
// per pinned version, so a version bump in tools/ builds anew.
const cacheEnv = "TUNNEL_K8S_CACHE"

// The modules in tools/ that pin what runs: each builds one set of
// binaries, cached under the version its go.mod requires.
var (
	kubeTools = toolModule{
		dir: filepath.Join("tools", "kubernetes"), module: "k8s.io/kubernetes",
		pkgs: []string{"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"},
		bins: []string{"kube-apiserver", "kubectl"}, estimate: "15-40 minutes",
	}
	etcdTools = toolModule{
		dir: filepath.Join("tools", "etcd"), module: "go.etcd.io/etcd/server/v3",
		pkgs: []string{"go.etcd.io/etcd/server/v3"}, bins: []string{"etcd"}, prefix: "etcd-",
		estimate: "2-5 minutes",
	}
)

// toolModule is one module under tools/ and the binaries built from it.
type toolModule struct {
	dir      string   // the module's directory, relative to this package
	module   string   // the required module whose version names the cache entry
	pkgs     []string // main packages to build
	bins     []string // the binaries they produce, in order
	prefix   string   // cache subdirectory prefix before the version
	estimate string   // how long a cold build takes on two cores
}

// binaries are the paths of every program the tests run.
type binaries struct {
	tunnelServer, tunnelAgent string
	kubeAPIServer, kubectl    string
	etcd                      string
	kubeVersion, etcdVersion  string
}

// version reads the version of m.module that m's go.mod requires.
func (m toolModule) version() (string, error) {
	mod, err := os.ReadFile(filepath.Join(m.dir, "go.mod"))
	if err != nil {
		return "", err
	}
	re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(m.module) + `\s+(v\S+)`)
	match := re.FindSubmatch(mod)
	if match == nil {
		return "", fmt.Errorf("%s/go.mod does not require %s", m.dir, m.module)
	}
	return string(match[1]), nil
}

// ldflags returns the linker flags for m at version: stripped, and for
// Kubernetes the version the binaries report (kubectl version, /version).
func (m toolModule) ldflags(version string) string {
	flags := "-s -w"
	if m.module != kubeTools.module {
		return flags
	}
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	v := "k8s.io/component-base/version"
	flags += fmt.Sprintf(" -X %s.gitVersion=%s -X %s.gitTreeState=clean", v, version, v)
	if len(parts) >= 2 {
		flags += fmt.Sprintf(" -X %s.gitMajor=%s -X %s.gitMinor=%s", v, parts[0], v, parts[1])
	}
	return flags
}

// cacheRoot returns the directory binaries are cached in.
func cacheRoot() (string, error) {
	if dir := os.Getenv(cacheEnv); dir != "" {
		return filepath.Abs(dir)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no $%s and no home directory: %w", cacheEnv, err)
	}
	return filepath.Join(home, ".cache", "tunnel-kubernetes"), nil
}

// ensure returns the directory holding m's binaries, building them first
// if the cache lacks any. Concurrent runs take turns through a lock file.
func (m toolModule) ensure(root string, logf func(string, ...any)) (dir, version string, err error) {
	if version, err = m.version(); err != nil {
		return "", "", err
	}
	dir = filepath.Join(root, m.prefix+version)
	if m.cached(dir) {
		return dir, version, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", "", err
	}
	unlock, err := lockFile(filepath.Join(root, ".lock"))
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if m.cached(dir) { // another run built it while we waited
		return dir, version, nil
	}
	logf("kubernetes e2e: one-time cold build of %s %s (%s) into %s; %s on two cores, cached for later runs",
		m.module, version, strings.Join(m.bins, ", "), dir, m.estimate)
	start := time.Now()
	if err := m.build(root, dir, version); err != nil {
		return "", "", err
	}
	logf("kubernetes e2e: built %s %s in %s", m.module, version, time.Since(start).Round(time.Second))
	return dir, version, nil
}

// cached reports whether every binary of m is in dir.
func (m toolModule) cached(dir string) bool {
	for _, b := range m.bins {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// build compiles m into a temporary directory beside dir and renames it
// into place, so an interrupted build never leaves a partial entry.
func (m toolModule) build(root, dir, version string) error {
	tmp, err := os.MkdirTemp(root, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), coldBuildTimeout)
	defer cancel()
	// One package is built to its binary's name (go.etcd.io/etcd/server/v3
	// would otherwise be "server"); several go into the directory.
	out := tmp + string(filepath.Separator)
	if len(m.pkgs) == 1 {
		out = filepath.Join(tmp, m.bins[0])
	}
	args := append([]string{"build", "-trimpath", "-ldflags", m.ldflags(version), "-o", out}, m.pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = m.dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s in %s failed: %v\n%s", strings.Join(args, " "), m.dir, err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// buildTunnel builds tunnel-server and tunnel-agent from the main module's
// working tree (two directories up) into a new temporary directory, as the
// other e2e packages do; the caller removes it.
func buildTunnel() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(mod, []byte("module github.com/tunnel-project/tunnel\n")) {
		return "", fmt.Errorf("%s is not the tunnel module root (go.mod: %v)", root, err)
	}
	dir, err := os.MkdirTemp("", "tunnel-k8s-bin-")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), tunnelBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/tunnel-server", "./cmd/tunnel-agent")
	cmd.Dir = root
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build in %s failed: %v\n%s", root, err, out)
	}
	return dir, nil
}

// buildAll builds (or finds cached) every binary the tests run.
func buildAll(logf func(string, ...any)) (binaries, func(), error) {
	var b binaries
	root, err := cacheRoot()
	if err != nil {
		return b, nil, err
	}
	kubeDir, kubeVersion, err := kubeTools.ensure(root, logf)
	if err != nil {
		return b, nil, err
	}
	etcdDir, etcdVersion, err := etcdTools.ensure(root, logf)
	if err != nil {
		return b, nil, err
	}
	tunnelDir, err := buildTunnel()
	if err != nil {
		return b, nil, err
	}
	b = binaries{
		tunnelServer:  filepath.Join(tunnelDir, "tunnel-server"),
		tunnelAgent:   filepath.Join(tunnelDir, "tunnel-agent"),
		kubeAPIServer: filepath.Join(kubeDir, "kube-apiserver"),
		kubectl:       filepath.Join(kubeDir, "kubectl"),
		etcd:          filepath.Join(etcdDir, "etcd"),
		kubeVersion:   kubeVersion, etcdVersion: etcdVersion,
	}
	return b, func() { os.RemoveAll(tunnelDir) }, nil
}

// errNoNetns is why the tests skip where network namespaces cannot be made.
var errNoNetns = errors.New("needs root (CAP_SYS_ADMIN) and iproute2's ip to create network namespaces")

// checkPrivileges reports whether this process can create network
// namespaces, before hours are spent on a cold build for nothing.
func checkPrivileges() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: %v", errNoNetns, err)
	}
	if os.Geteuid() != 0 {
		return errNoNetns
	}
	if _, err := os.Stat("/proc/thread-self/ns/net"); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: no /proc/thread-self/ns/net", errNoNetns)
	}
	return nil
}
