package node

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// TestProgressFollowed: a client that follows a request sees the
// progress the handler reports while it runs, and nothing after; the
// operation is gone once the request ends.
func TestProgressFollowed(t *testing.T) {
	n := limitNode(t, 0)
	seen := make(chan Progress, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/gc", n.followed(func(w http.ResponseWriter, r *http.Request) {
		op := operationOf(r.Context())
		op.phase("working", "paths", 10)
		op.set(3, 0)
		select { // until the client has seen it
		case <-seen:
		case <-time.After(10 * time.Second):
		}
		writeJSON(w, http.StatusOK, &GCReport{PathsRemoved: 1})
	}))
	mux.HandleFunc("GET /api/v1/progress/{id}", n.serveProgress)
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()

	var calls []Progress
	c := NewClient(sock).WithProgress(func(p Progress) {
		calls = append(calls, p)
		if len(calls) == 1 {
			seen <- p
		}
	})
	rep, err := c.GC(context.Background())
	if err != nil || rep.PathsRemoved != 1 {
		t.Fatalf("gc: %+v, %v", rep, err)
	}
	if len(calls) == 0 || calls[0] != (Progress{Phase: "working", Unit: "paths", Done: 3, Total: 10}) {
		t.Fatalf("progress seen: %+v", calls)
	}
	n.ops.mu.Lock()
	left := len(n.ops.m)
	n.ops.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d operations still followed after the request", left)
	}
}
