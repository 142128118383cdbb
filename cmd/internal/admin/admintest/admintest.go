// Package admintest helps tests of the admin listener's handlers.
package admintest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Get serves a GET of path with h and returns the status and body.
func Get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}
