package tunnel

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDocNamesEveryFile keeps doc.go's file map true: every file of the
// package (tests aside) is named there, and every .go name there is a
// file of the package.
func TestDocNamesEveryFile(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	named := regexp.MustCompile(`\b[a-z0-9_]+\.go\b`).FindAllString(string(doc), -1)
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") && n != "doc.go" {
			files = append(files, n)
		}
	}
	for _, f := range files {
		if !slices.Contains(named, f) {
			t.Errorf("doc.go does not name %s: add it to the file map", f)
		}
	}
	for _, n := range named {
		if !slices.Contains(files, n) && n != "doc_test.go" {
			t.Errorf("doc.go names %s, which is not a file of the package", n)
		}
	}
}
