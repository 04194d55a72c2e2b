package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"sync"
	"time"
)

// Progress of long control requests (fetch, verify, gc), for the
// commands' progress bars. A request that names an operation (header
// progressHeader, a random id the client makes) registers its progress
// under that name for as long as it runs; the client reads it meanwhile
// with GET /api/v1/progress/{id}. Polling keeps each request's answer one
// JSON object, as before, and costs nothing when no client asks.

const progressHeader = "P2pstore-Progress"

// Progress is how far an operation is.
type Progress struct {
	Phase string `json:"phase"` // what it does now
	Unit  string `json:"unit"`  // of Done and Total: "bytes", "paths"
	Done  uint64 `json:"done"`
	Total uint64 `json:"total"` // 0: not known
}

// operation is a request's progress; its methods do nothing on nil, so
// that code reports progress whether or not anyone follows it.
type operation struct {
	mu sync.Mutex
	p  Progress
}

// phase starts a phase of the operation, from 0 of total.
func (o *operation) phase(phase, unit string, total uint64) {
	if o == nil {
		return
	}
	o.mu.Lock()
	o.p = Progress{Phase: phase, Unit: unit, Total: total}
	o.mu.Unlock()
}

// set says how far the phase is; a total of 0 keeps the last one.
func (o *operation) set(done, total uint64) {
	if o == nil {
		return
	}
	o.mu.Lock()
	o.p.Done = done
	if total > 0 {
		o.p.Total = total
	}
	o.mu.Unlock()
}

func (o *operation) get() Progress {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.p
}

// operations are the operations followed now, by id.
type operations struct {
	mu sync.Mutex
	m  map[string]*operation
}

// maxOperations bounds the operations followed at once: the control
// socket is the owner's, but a runaway script should not grow the map.
const maxOperations = 256

type operationKey struct{}

// follow registers the operation a request names, if it names one, and
// returns the request with it in its context (operationOf) and the
// function that ends it.
func (n *Node) follow(r *http.Request) (*http.Request, func()) {
	id := r.Header.Get(progressHeader)
	if id == "" || len(id) > 64 {
		return r, func() {}
	}
	ops := &n.ops
	ops.mu.Lock()
	defer ops.mu.Unlock()
	if ops.m == nil {
		ops.m = map[string]*operation{}
	}
	if _, taken := ops.m[id]; taken || len(ops.m) >= maxOperations {
		return r, func() {}
	}
	op := &operation{}
	ops.m[id] = op
	return r.WithContext(context.WithValue(r.Context(), operationKey{}, op)), func() {
		ops.mu.Lock()
		delete(ops.m, id)
		ops.mu.Unlock()
	}
}

// operationOf is the operation a request's context follows, or nil.
func operationOf(ctx context.Context) *operation {
	op, _ := ctx.Value(operationKey{}).(*operation)
	return op
}

// followed wraps a control handler whose progress a client may follow.
func (n *Node) followed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r, end := n.follow(r)
		defer end()
		h(w, r)
	}
}

func (n *Node) serveProgress(w http.ResponseWriter, r *http.Request) {
	n.ops.mu.Lock()
	op := n.ops.m[r.PathValue("id")]
	n.ops.mu.Unlock()
	if op == nil {
		writeError(w, http.StatusNotFound, errors.New("no such operation running"))
		return
	}
	writeJSON(w, http.StatusOK, op.get())
}

// progressEvery is how often a client following an operation asks.
const progressEvery = 200 * time.Millisecond

// WithProgress returns a client whose long requests (Fetch, Verify, GC)
// call fn with their progress while they run, from another goroutine.
func (c *Client) WithProgress(fn func(Progress)) *Client {
	cc := *c
	cc.progress = fn
	return &cc
}

// follow sends req, following its progress when the client was asked
// to (WithProgress).
func (c *Client) follow(req *http.Request, out any) error {
	if c.progress == nil {
		return c.do(req, out)
	}
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	req.Header.Set(progressHeader, id)
	ctx, stop := context.WithCancel(req.Context())
	defer stop()
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var p Progress
			if c.get(ctx, "/api/v1/progress/"+id, &p) == nil && ctx.Err() == nil {
				c.progress(p)
			}
		}
	}()
	err := c.do(req, out)
	stop()
	<-polled // no call of fn after this returns
	return err
}
