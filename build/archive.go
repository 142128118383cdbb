package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// entry is one file or directory of an archive.
type entry struct {
	name string      // slash-separated, relative; directories end in "/"
	mode fs.FileMode // permission bits (and sticky)
	uid  int         // owner and group
	data []byte      // a file's contents
}

// dir and file make entries owned by root.
func dir(name string, mode fs.FileMode) entry { return entry{name: name, mode: mode} }
func file(name string, mode fs.FileMode, data []byte) entry {
	return entry{name: name, mode: mode, data: data}
}

// readFile makes an entry of the file at src, with mode.
func readFile(name string, mode fs.FileMode, src string) (entry, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return entry{}, err
	}
	return file(name, mode, data), nil
}

// makeTar returns a tar of entries in name order (parents first), each
// dated mtime and owned by uid:uid with no user or group names, in the
// USTAR format: the same entries always give the same bytes. Every parent
// directory must be an entry of its own.
func makeTar(entries []entry, mtime time.Time) ([]byte, error) {
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	dirs := map[string]bool{"": true}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, e := range entries {
		if i > 0 && entries[i-1].name == e.name {
			return nil, fmt.Errorf("%s: twice in the archive", e.name)
		}
		if parent := path.Dir(strings.TrimSuffix(e.name, "/")) + "/"; !dirs[strings.TrimPrefix(parent, "./")] {
			return nil, fmt.Errorf("%s: its directory %s is not in the archive", e.name, parent)
		}
		h := &tar.Header{
			Name:    e.name,
			Mode:    int64(e.mode.Perm()),
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if e.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000 // c_ISVTX
		}
		if strings.HasSuffix(e.name, "/") {
			h.Typeflag = tar.TypeDir
			dirs[e.name] = true
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipped compresses data at the default level with no name and no time in
// the header, so that the same data always gives the same bytes.
func gzipped(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf) // Header.ModTime zero: no time is written
	if _, err := zw.Write(data); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
