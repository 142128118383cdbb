package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Release archives: tunnel-VERSION-OS-ARCH.tar.gz per platform, each a
// directory of the same name holding both binaries and the documents, and
// SHA256SUMS over the archives in the format `sha256sum -c` reads.

// sumsFile is the checksum file's name.
const sumsFile = "SHA256SUMS"

// releaseOptions are the flags of `tunnel-dist release`.
type releaseOptions struct {
	distDir   string   // holds OS-ARCH/ directories of binaries
	platforms listFlag // OS/ARCH
	docs      listFlag // files put beside the binaries
	version   string
	epoch     epochFlag
	out       string // replaced
}

func runRelease(args []string) error {
	var o releaseOptions
	fs := flag.NewFlagSet(prog+" release", flag.ContinueOnError)
	fs.StringVar(&o.distDir, "dist-dir", "", "directory holding OS-ARCH/ directories of binaries")
	fs.Var(&o.platforms, "platform", "OS/ARCH to pack (repeatable)")
	fs.Var(&o.docs, "doc", "file to put beside the binaries, e.g. README.md, LICENSE (repeatable)")
	fs.StringVar(&o.version, "version", "", "version, part of every archive's name")
	fs.Var(&o.epoch, "epoch", "SOURCE_DATE_EPOCH: every timestamp in the archives")
	fs.StringVar(&o.out, "out", "", "directory to write the archives and "+sumsFile+" to (replaced)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := required("dist-dir", o.distDir, "version", o.version, "out", o.out); err != nil {
		return err
	}
	switch {
	case len(o.platforms) == 0:
		return fmt.Errorf("--platform is required")
	case o.epoch.t.IsZero():
		return fmt.Errorf("--epoch is required")
	case strings.ContainsAny(o.version, `/\ `):
		return fmt.Errorf("--version %q cannot be part of a file name", o.version)
	}
	return o.write()
}

// write replaces the output directory with one archive per platform and the
// checksum file.
func (o releaseOptions) write() error {
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	var sums []string
	for _, p := range o.platforms {
		name, data, err := o.archive(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := os.WriteFile(filepath.Join(o.out, name), data, 0o644); err != nil {
			return err
		}
		sums = append(sums, fmt.Sprintf("%x  %s\n", sha256.Sum256(data), name))
		fmt.Println(filepath.Join(o.out, name))
	}
	slices.Sort(sums)
	return os.WriteFile(filepath.Join(o.out, sumsFile), []byte(strings.Join(sums, "")), 0o644)
}

// archive returns the file name and gzipped tar of one platform.
func (o releaseOptions) archive(platform string) (string, []byte, error) {
	goos, goarch, ok := strings.Cut(platform, "/")
	if !ok || goos == "" || goarch == "" || strings.Contains(goarch, "/") {
		return "", nil, fmt.Errorf("not OS/ARCH")
	}
	base := fmt.Sprintf("tunnel-%s-%s-%s", o.version, goos, goarch)
	entries := []entry{dir(base+"/", 0o755)}
	for _, b := range binaries {
		e, err := readFile(base+"/"+b, 0o755, filepath.Join(o.distDir, goos+"-"+goarch, b))
		if err != nil {
			return "", nil, err
		}
		entries = append(entries, e)
	}
	for _, d := range o.docs {
		e, err := readFile(base+"/"+filepath.Base(d), 0o644, d)
		if err != nil {
			return "", nil, err
		}
		entries = append(entries, e)
	}
	t, err := makeTar(entries, o.epoch.t)
	if err != nil {
		return "", nil, err
	}
	data, err := gzipped(t)
	return base + ".tar.gz", data, err
}
