package deploy

import (
	"archive/tar"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// `make image` checked with real tools: built twice, one digest; the
// docker-archive names the image the manifests run; unpacked by Debian's
// umoci, the root filesystem is exactly the binaries and the user, the
// binaries are static, and they run: --version, and a server and an agent
// from the unpacked image carry a CONNECT over loopback.

// distTimeout bounds one `make image` or `make release`: the first builds
// every package with -trimpath and CGO_ENABLED=0, and the image tool, from
// a cold cache 4m20s on an idle two-core machine; TestImage and TestRelease
// do it at once, at low priority. (CI builds them before its CPU hog
// starts: .ci/run.)
const distTimeout = 15 * time.Minute

// rootfsFiles is everything the image holds: no shell, nothing else.
var rootfsFiles = []string{"etc", "etc/group", "etc/nsswitch.conf", "etc/passwd", "tmp", "usr", "usr/local",
	"usr/local/bin", "usr/local/bin/tunnel-agent", "usr/local/bin/tunnel-server"}

// runMake runs make in the main module with args, at low CPU priority so
// that the build does not starve the process tests running beside it.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), distTimeout)
	defer cancel()
	argv := append([]string{"make", "-s", "-C", root}, args...)
	if nice, err := exec.LookPath("nice"); err == nil {
		argv = append([]string{nice, "-n", "10"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v (after %s)\n%s", strings.Join(args, " "), err, time.Since(start).Round(time.Second), out)
	}
	t.Logf("make %s: %s", args[0], time.Since(start).Round(time.Second))
	return string(out)
}

// makeVar returns the value of a variable of the Makefile.
func makeVar(t *testing.T, name string) string {
	t.Helper()
	out, code := run(t, "make", "-s", "-C", root, "--eval", "print-var: ; @echo $("+name+")", "print-var")
	if code != 0 {
		t.Fatalf("make: the value of %s: %s", name, out)
	}
	return strings.TrimSpace(out)
}

func TestImage(t *testing.T) {
	ref, version := makeVar(t, "IMAGE"), makeVar(t, "VERSION")
	var dirs, digests [2]string
	for i := range dirs {
		dirs[i] = t.TempDir()
		runMake(t, "image", "IMAGE_DIR="+dirs[i], "DIST_DIR="+t.TempDir())
		digests[i] = layoutDigest(t, filepath.Join(dirs[i], "oci"))
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of one tree: image digests %s and %s", digests[0], digests[1])
	}
	t.Logf("%s %s from both builds", ref, digests[0])
	cfg := imageConfig(t, filepath.Join(dirs[0], "oci"), digests[0])
	checkImageConfig(t, cfg, version)
	checkDockerArchive(t, filepath.Join(dirs[0], "tunnel.tar"), ref)

	if _, err := exec.LookPath("umoci"); err != nil {
		t.Skip("umoci is not installed (Debian package umoci; .ci/run installs it): the image was not unpacked and run")
	}
	bundle := filepath.Join(t.TempDir(), "bundle")
	tag := ref[strings.LastIndex(ref, ":")+1:]
	if out, code := run(t, "umoci", "unpack", "--rootless", "--image", filepath.Join(dirs[0], "oci")+":"+tag, bundle); code != 0 {
		t.Fatalf("umoci unpack: exit %d\n%s", code, out)
	}
	rootfs := filepath.Join(bundle, "rootfs")
	checkRootfs(t, rootfs)
	checkRuntimeUser(t, filepath.Join(bundle, "config.json"))
	bin := filepath.Join(rootfs, "usr", "local", "bin")
	p := startPair(t, bin)
	p.connectEcho(t)
	checkVersion(t, bin, version, p.scrapeBoth(t))
}

// ociDescriptor is a descriptor in an OCI index or manifest.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations"`
}

// layoutDigest returns the digest of the one image in an OCI layout.
func layoutDigest(t *testing.T, dir string) string {
	t.Helper()
	var index struct{ Manifests []ociDescriptor }
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: %d images, want 1", dir, len(index.Manifests))
	}
	return index.Manifests[0].Digest
}

// blob returns the path of a blob in an OCI layout.
func blob(dir, digest string) string {
	return filepath.Join(dir, "blobs", strings.Replace(digest, ":", string(filepath.Separator), 1))
}

// imageConfigFile is the part of an image configuration this test reads.
type imageConfigFile struct {
	Created string `json:"created"`
	OS      string `json:"os"`
	Config  struct {
		User       string
		Entrypoint []string
		Labels     map[string]string
	} `json:"config"`
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// imageConfig reads the configuration of the image digest in an OCI layout.
func imageConfig(t *testing.T, dir, digest string) imageConfigFile {
	t.Helper()
	var manifest struct {
		Config ociDescriptor
		Layers []ociDescriptor
	}
	readJSON(t, blob(dir, digest), &manifest)
	if len(manifest.Layers) != 1 {
		t.Errorf("image has %d layers, want 1", len(manifest.Layers))
	}
	var cfg imageConfigFile
	readJSON(t, blob(dir, manifest.Config.Digest), &cfg)
	return cfg
}

// checkImageConfig requires the unprivileged user, the server as the
// entrypoint, the version label, and the commit time as the creation time.
func checkImageConfig(t *testing.T, cfg imageConfigFile, version string) {
	t.Helper()
	epoch, err := strconv.ParseInt(makeVar(t, "SOURCE_DATE_EPOCH"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Unix(epoch, 0).UTC().Format(time.RFC3339)
	switch c := cfg.Config; {
	case c.User != "65532:65532":
		t.Errorf("image user %q, want 65532:65532", c.User)
	case !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/tunnel-server"}):
		t.Errorf("entrypoint %q", c.Entrypoint)
	case c.Labels["org.opencontainers.image.version"] != version:
		t.Errorf("version label %q, want %q", c.Labels["org.opencontainers.image.version"], version)
	case cfg.Created != created || cfg.OS != "linux":
		t.Errorf("image created %s for %s; want %s (SOURCE_DATE_EPOCH) for linux", cfg.Created, cfg.OS, created)
	}
}

// checkDockerArchive requires the tarball `docker load` and `kind load
// image-archive` read to name ref.
func checkDockerArchive(t *testing.T, path, ref string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s: no manifest.json", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			t.Fatal(err)
		}
		if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{ref}) {
			t.Errorf("%s: manifest.json %+v; want one image tagged %s", path, m, ref)
		}
		return
	}
}

// checkRootfs requires the unpacked root filesystem to hold exactly
// rootfsFiles, the binaries static and /etc/passwd naming the user.
func checkRootfs(t *testing.T, rootfs string) {
	t.Helper()
	var files []string
	filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if rel, _ := filepath.Rel(rootfs, p); err == nil && rel != "." {
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if !slices.Equal(files, rootfsFiles) {
		t.Errorf("image root filesystem holds %q; want exactly %q (no shell)", files, rootfsFiles)
	}
	for _, b := range []string{serverName, agentName} {
		f, err := elf.Open(filepath.Join(rootfs, "usr", "local", "bin", b))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked (it has an interpreter); the image has no libc", b)
			}
		}
		f.Close()
	}
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
	if err != nil || !strings.Contains(string(passwd), ":x:65532:65532:") {
		t.Errorf("/etc/passwd has no user 65532: %q, %v", passwd, err)
	}
}

// checkRuntimeUser requires the runtime configuration umoci derives from the
// image (its user resolved through the image's /etc/passwd) to run the
// process as 65532, not root.
func checkRuntimeUser(t *testing.T, path string) {
	t.Helper()
	var spec struct {
		Process struct {
			User struct{ UID, GID uint32 }
		}
	}
	readJSON(t, path, &spec)
	if u := spec.Process.User; u.UID != 65532 || u.GID != 65532 {
		t.Errorf("umoci's runtime config runs the process as %d:%d, want 65532:65532", u.UID, u.GID)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
