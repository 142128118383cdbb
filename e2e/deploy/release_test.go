package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

// `make release` for this machine's platform only (the default list adds
// linux/arm64, a cold cross build of minutes): built twice, one
// SHA256SUMS, which `sha256sum -c` accepts; GNU tar unpacks the archive into
// its own directory; the binaries carry the version given to make in
// --version and tunnel_build_info, and carry a CONNECT.

func TestRelease(t *testing.T) {
	const version = "v0.0.0-e2e.1"
	platform := "linux/" + runtime.GOARCH
	base := "tunnel-" + version + "-linux-" + runtime.GOARCH
	var outs [2]string
	var sums [2][]byte
	for i := range outs {
		outs[i] = t.TempDir()
		runMake(t, "release", "RELEASE_PLATFORMS="+platform, "VERSION="+version,
			"RELEASE_DIR="+outs[i], "DIST_DIR="+t.TempDir())
		var err error
		if sums[i], err = os.ReadFile(filepath.Join(outs[i], "SHA256SUMS")); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(sums[0], sums[1]) {
		t.Fatalf("two builds of one tree: SHA256SUMS\n%s\nand\n%s", sums[0], sums[1])
	}
	t.Logf("SHA256SUMS of both builds:\n%s", sums[0])
	ents, _ := os.ReadDir(outs[0])
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"SHA256SUMS", base + ".tar.gz"}; !slices.Equal(names, want) {
		t.Errorf("make release wrote %q, want %q", names, want)
	}
	if out, code := runIn(t, outs[0], "sha256sum", "-c", "SHA256SUMS"); code != 0 {
		t.Fatalf("sha256sum -c SHA256SUMS: exit %d\n%s", code, out)
	}
	x := t.TempDir()
	if out, code := run(t, "tar", "-xzf", filepath.Join(outs[0], base+".tar.gz"), "-C", x); code != 0 {
		t.Fatalf("tar -xzf: exit %d\n%s", code, out)
	}
	dir := filepath.Join(x, base)
	for _, f := range []string{serverName, agentName, "README.md"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("the archive has no %s/%s: %v", base, f, err)
		}
	}
	p := startPair(t, dir)
	p.connectEcho(t)
	checkVersion(t, dir, version, p.scrapeBoth(t))
}
