package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pipeline reads answers framed either way, in order, and refuses one
// that is not the narinfo it asked for.
func TestPipeline(t *testing.T) {
	wrong := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hash := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".narinfo")
		if hash == wrong {
			hash = "someother"
		}
		body := fmt.Sprintf("StorePath: /gnu/store/%s-x\nReferences: \n", hash)
		if strings.HasSuffix(hash, "1") { // chunked: flushed before the end
			io.WriteString(w, body[:10])
			w.(http.Flusher).Flush()
			io.WriteString(w, body[10:])
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		io.WriteString(w, body)
	}))
	defer srv.Close()
	list := filepath.Join(t.TempDir(), "hashes")
	if err := os.WriteFile(list, []byte("aaa0\naaa1\naaa2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmdPipeline([]string{"-n", "100", srv.URL, list}); err != nil {
		t.Fatal(err)
	}
	wrong = "aaa1"
	if err := cmdPipeline([]string{"-n", "100", srv.URL, list}); err == nil || !strings.Contains(err.Error(), "answer 1 is not the narinfo of aaa1") {
		t.Errorf("a wrong answer gave %v", err)
	}
}
