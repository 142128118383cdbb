package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image: FROM scratch, one layer holding both binaries and the user
// they run as. No shell, no package manager, no CA bundle: the binaries are
// static (CGO_ENABLED=0), and every TLS peer they verify is named by a CA
// file from the command line or the kubeconfig.

// Who the image runs as unless the pod says otherwise (the manifests run
// it as root without capabilities, to read root-owned keys on the host).
const (
	userID   = 65532
	userName = "tunnel"
	binDir   = "usr/local/bin/"
)

// imageOptions are the flags of `tunnel-dist image`.
type imageOptions struct {
	binDir   string // holds the binaries, built for linux/arch
	ref      string // name:tag in the tarball and the OCI layout
	arch     string // GOARCH the binaries are built for
	version  string // admin.version the binaries carry
	revision string // the commit
	source   string // where the source lives
	epoch    epochFlag
	ociDir   string // OCI image layout, replaced
	tarPath  string // docker-archive tarball, replaced
}

func runImage(args []string) error {
	var o imageOptions
	fs := flag.NewFlagSet(prog+" image", flag.ContinueOnError)
	fs.StringVar(&o.binDir, "bin-dir", "", "directory holding "+fmt.Sprint(binaries)+", built for linux/--arch")
	fs.StringVar(&o.ref, "ref", "", "image reference, NAME:TAG")
	fs.StringVar(&o.arch, "arch", "", "GOARCH of the binaries (amd64, arm64, ...)")
	fs.StringVar(&o.version, "version", "", "version the binaries were stamped with")
	fs.StringVar(&o.revision, "revision", "", "commit the binaries were built from")
	fs.StringVar(&o.source, "source", "https://github.com/tunnel-project/tunnel", "org.opencontainers.image.source")
	fs.Var(&o.epoch, "epoch", "SOURCE_DATE_EPOCH: every timestamp in the image")
	fs.StringVar(&o.ociDir, "oci", "", "OCI image layout directory to write (replaced)")
	fs.StringVar(&o.tarPath, "tarball", "", "docker-archive tarball to write, for docker/podman load, kind load image-archive, ctr import (replaced)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := required("bin-dir", o.binDir, "ref", o.ref, "arch", o.arch, "version", o.version,
		"revision", o.revision, "oci", o.ociDir, "tarball", o.tarPath); err != nil {
		return err
	}
	if o.epoch.t.IsZero() {
		return fmt.Errorf("--epoch is required")
	}
	return o.write()
}

// write builds the image and writes both outputs, then prints the digest.
func (o imageOptions) write() error {
	tag, err := name.NewTag(o.ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("--ref: %w", err)
	}
	img, err := o.image()
	if err != nil {
		return err
	}
	if err := writeLayout(o.ociDir, img, tag, o.platform()); err != nil {
		return fmt.Errorf("OCI layout %s: %w", o.ociDir, err)
	}
	if err := os.MkdirAll(filepath.Dir(o.tarPath), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(o.tarPath, tag, img); err != nil {
		return fmt.Errorf("tarball %s: %w", o.tarPath, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s\n", tag, digest)
	return nil
}

func (o imageOptions) platform() v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: o.arch}
	if o.arch == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// image assembles the image from the root filesystem layer and the config.
func (o imageOptions) image() (v1.Image, error) {
	rootfs, err := o.rootfs()
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(rootfs)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.epoch.t}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: created, CreatedBy: "make image", Comment: "tunnel " + o.version},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	p := o.platform()
	cf.Created, cf.OS, cf.Architecture, cf.Variant = created, p.OS, p.Architecture, p.Variant
	cf.Config = o.config()
	return mutate.ConfigFile(img, cf)
}

// config is what a runtime starts: tunnel-server unless the pod names a
// command (the manifests always do), as the unprivileged user.
func (o imageOptions) config() v1.Config {
	return v1.Config{
		User:         fmt.Sprintf("%d:%d", userID, userID),
		Entrypoint:   []string{"/" + binDir + "tunnel-server"},
		Env:          []string{"PATH=/usr/local/bin"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{"8132/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":    "tunnel",
			"org.opencontainers.image.version":  o.version,
			"org.opencontainers.image.revision": o.revision,
			"org.opencontainers.image.source":   o.source,
			"org.opencontainers.image.created":  o.epoch.t.Format(time.RFC3339),
		},
	}
}

// rootfs returns the gzipped layer: the binaries, /etc/passwd and
// /etc/group naming the user, /etc/nsswitch.conf for the pure-Go
// resolver, and a sticky /tmp.
func (o imageOptions) rootfs() ([]byte, error) {
	entries := []entry{
		dir("etc/", 0o755),
		file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/nonexistent:/sbin/nologin\n", userName, userID, userID, userName)),
		file("etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\n%s:x:%d:\n", userName, userID)),
		file("etc/nsswitch.conf", 0o644, []byte("hosts: files dns\n")),
		dir("tmp/", 0o777|os.ModeSticky),
		dir("usr/", 0o755),
		dir("usr/local/", 0o755),
		dir(binDir, 0o755),
	}
	for _, b := range binaries {
		e, err := readFile(binDir+b, 0o755, filepath.Join(o.binDir, b))
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	layerTar, err := makeTar(entries, o.epoch.t)
	if err != nil {
		return nil, err
	}
	return gzipped(layerTar)
}

// writeLayout replaces dir with an OCI image layout holding img alone,
// named by its tag (org.opencontainers.image.ref.name, what skopeo's and
// umoci's oci:DIR:TAG look up) and by its full reference (what containerd
// names an imported image).
func writeLayout(dir string, img v1.Image, tag name.Tag, p v1.Platform) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return lp.AppendImage(img, layout.WithPlatform(p), layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.String(),
	}))
}
