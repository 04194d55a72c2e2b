package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/fetch"
)

// The control API: HTTP over the daemon socket, for the commands (import,
// status, verify, gc). It lives on the unix socket, not on http.listen, so
// that only users who may open the socket can change the store.

// ImportResult reports one imported path.
type ImportResult struct {
	Path       string `json:"path"`
	NarSize    uint64 `json:"nar_size"`
	NewBytes   int64  `json:"new_bytes"`   // chunk bytes this import added to the store
	DedupBytes int64  `json:"dedup_bytes"` // chunk bytes that were already stored
	NewChunks  int    `json:"new_chunks"`
	Existed    bool   `json:"existed,omitempty"`
	Shared     bool   `json:"shared"` // given to peers (see Sharing)
}

// Status is what `p2pstore status` and /api/v1/status report. Every
// figure is a counter the node keeps: status walks neither the paths nor
// the objects (metrics read it at every scrape).
type Status struct {
	PeerID                string   `json:"peer_id"`
	Addrs                 []string `json:"addrs"`
	Peers                 int      `json:"peers"`
	Paths                 int      `json:"paths"`
	BytesStored           uint64   `json:"bytes_stored"`  // chunk bytes on disk, after dedup
	BytesLogical          uint64   `json:"bytes_logical"` // sum of the NAR sizes of all paths
	DedupRatio            float64  `json:"dedup_ratio"`   // bytes_stored / bytes_logical
	Chunks                uint64   `json:"chunks"`
	ChunksCompressed      uint64   `json:"chunks_compressed"` // chunks with their zstd frame made`
	Directories           uint64   `json:"directories"`
	P2PBytesReceived      uint64   `json:"p2p_bytes_received"`
	P2PBytesSent          uint64   `json:"p2p_bytes_sent"`
	UpstreamBytesReceived uint64   `json:"upstream_bytes_received"` // compressed NAR and narinfo bytes read from upstream.substituters
	HTTPListen            string   `json:"http_listen"`
	DaemonSocket          string   `json:"daemon_socket,omitempty"` // the control socket only
	PublicKey             string   `json:"public_key,omitempty"`
	// DHT announcements: whether the provider is in contact with the DHT,
	// and the keys waiting to be announced.
	DHTOnline       bool  `json:"dht_online"`
	AnnouncePending int64 `json:"announce_pending"`
	// Imports in progress, and the bytes aborted ones left for gc.
	ImportsRunning int64 `json:"imports_running"`
	GarbageBytes   int64 `json:"garbage_bytes"`
	// Of the paths: those the node gives to peers, and the others (no
	// signature by a trusted key or the node's, or imported --private).
	// Not known while the node counts them after its start.
	SharedPaths   int  `json:"shared_paths"`
	PrivatePaths  int  `json:"private_paths"`
	SharedCounted bool `json:"shared_counted"`
	// The disk limit (storage.max_bytes, 0 for none) on bytes_stored, and
	// the paths it keeps whatever it says (pinned) or may remove.
	MaxBytes      uint64 `json:"max_bytes"`
	PinnedPaths   int    `json:"pinned_paths"`
	UnpinnedPaths int    `json:"unpinned_paths"`
	// Signed paths of the local Nix store served without an import
	// (local.share), and whether the first scan of that store is done.
	LocalShared  int  `json:"local_shared"`
	LocalScanned bool `json:"local_scanned"`
	// The cache of hot NARs kept as files (storage.nar_cache_bytes), and
	// the NAR responses it served.
	NARCacheBytes   int64  `json:"nar_cache_bytes"`
	NARCacheMax     int64  `json:"nar_cache_max"`
	NARCacheEntries int    `json:"nar_cache_entries"`
	NARCacheHits    uint64 `json:"nar_cache_hits"`

	// ConnectedPeers are the peers connected now, with what each served
	// the node (the control socket's status only).
	ConnectedPeers []PeerStatus `json:"connected_peers,omitempty"`
	// PathSources counts the paths by how they came: import (added by
	// hand: imports and nix copy --to the daemon socket), peer, upstream,
	// local (copied from the local Nix store), unknown (recorded before
	// the node kept it).
	PathSources map[string]int `json:"path_sources"`
	// Lookups that asked the upstreams: answered with a trusted narinfo,
	// or not.
	UpstreamHits   uint64 `json:"upstream_hits"`
	UpstreamMisses uint64 `json:"upstream_misses"`
	// DiskBytes is the size of the pack files: bytes_stored, the zstd
	// frames made for .nar.zst, and garbage not yet given back.
	DiskBytes uint64 `json:"disk_bytes"`
	// Of the announcements pending, the keys; the keys announced since
	// the start; and when the node last finished announcing everything
	// it holds (at its start, and whenever it regains the DHT).
	DHTQueuedKeys   int64     `json:"dht_queued_keys"`
	DHTProvidedKeys uint64    `json:"dht_provided_keys"`
	DHTLastSweep    time.Time `json:"dht_last_sweep,omitzero"`
}

// maxMetaLine bounds the JSON header of an import request.
const maxMetaLine = 4 << 20

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiError{Error: err.Error()})
}

// controlHandler serves the control API.
func (n *Node) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", n.serveStatus)
	mux.HandleFunc("GET /api/v1/peers", n.servePeers)
	mux.HandleFunc("GET /api/v1/paths", n.servePaths)
	mux.HandleFunc("GET /api/v1/paths/{hash}", func(w http.ResponseWriter, r *http.Request) {
		hash := r.PathValue("hash")
		if err := storepath.ValidateHash(hash); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		info, err := n.index.Get(hash)
		if errors.Is(err, pathinfo.ErrNotFound) {
			writeError(w, http.StatusNotFound, err)
			return
		}
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /api/v1/import", func(w http.ResponseWriter, r *http.Request) {
		br := bufio.NewReaderSize(r.Body, 64<<10)
		line, err := readLine(br, maxMetaLine)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("import header: %w", err))
			return
		}
		var info pathinfo.Info
		if err := json.Unmarshal(line, &info); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("import header: %w", err))
			return
		}
		res, err := n.Import(r.Context(), &info, br, Sharing(r.URL.Query().Get("share")))
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrBadInput) {
				code = http.StatusBadRequest
			}
			writeError(w, code, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /api/v1/verify", n.followed(n.serveVerify))
	mux.HandleFunc("POST /api/v1/fetch", n.followed(n.serveFetch))
	mux.HandleFunc("POST /api/v1/gc", n.followed(n.serveGC))
	mux.HandleFunc("GET /api/v1/progress/{id}", n.serveProgress)
	mux.HandleFunc("POST /api/v1/pin", n.servePin)
	// Profiles, for the node's owner only (this socket is theirs).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	return mux
}

func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > max {
			return nil, fmt.Errorf("longer than %d bytes", max)
		}
		if err == nil {
			return bytes.TrimSuffix(line, []byte("\n")), nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
}

// Client talks to a running node over its daemon socket.
type Client struct {
	http     *http.Client
	socket   string
	progress func(Progress) // see WithProgress
}

// NewClient returns a client for the node listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 8,
	}
	return &Client{http: &http.Client{Transport: tr}, socket: socket}
}

func (c *Client) do(req *http.Request, out any) error {
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// send sends req and returns the answer if it is a 200, else the error
// it says.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, SocketError(c.socket, op.Err)
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e apiError
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &StatusError{Code: resp.StatusCode, Msg: e.Error}
		}
		return nil, &StatusError{Code: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	return resp, nil
}

// SocketError says why the node's socket could not be reached: no node
// there, or one the user may not talk to (the socket is its user's alone,
// or its group's, with daemon.socket_group).
func SocketError(socket string, err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("permission denied on the node's socket %s: run this as the node's user, or as a member of its daemon.socket_group", socket)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no node is running at %s (start one with `p2pstore serve`)", socket)
	}
	return fmt.Errorf("cannot reach the node at %s: %v", socket, err)
}

// StatusError is a non-200 answer from the node.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://p2pstore"+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, out)
}

// post sends in (nil for no body) as JSON and decodes the answer into out.
func (c *Client) post(ctx context.Context, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://p2pstore"+path, body)
	if err != nil {
		return err
	}
	return c.follow(req, out)
}

// Status returns the node's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.get(ctx, "/api/v1/status", &s)
}

// HasPath reports whether the node holds the store path with this hash part.
func (c *Client) HasPath(ctx context.Context, hash string) (bool, error) {
	err := c.get(ctx, "/api/v1/paths/"+hash, nil)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// Path returns the node's record of the store path with this hash part:
// its metadata, the root of its tree, whether it is private.
func (c *Client) Path(ctx context.Context, hash string) (*pathinfo.Info, error) {
	var info pathinfo.Info
	if err := c.get(ctx, "/api/v1/paths/"+hash, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// Import sends one path's metadata and NAR to the node; share says
// whether the node signs it (and so shares it) or keeps it private.
func (c *Client) Import(ctx context.Context, info *pathinfo.Info, nar io.Reader, share Sharing) (*ImportResult, error) {
	head, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	body := io.MultiReader(bytes.NewReader(append(head, '\n')), nar)
	u := "http://p2pstore/api/v1/import"
	if share != ShareDefault {
		u += "?share=" + url.QueryEscape(string(share))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return nil, err
	}
	var res ImportResult
	return &res, c.do(req, &res)
}

// VerifyReport is the outcome of `p2pstore verify`.
type VerifyReport struct {
	Paths       int      `json:"paths"`
	Chunks      int      `json:"chunks"`
	Directories int      `json:"directories"`
	Bytes       uint64   `json:"bytes"`
	Problems    []string `json:"problems,omitempty"` // damaged objects (the first maxReported)
	// Damaged are the paths that use a damaged or missing object, and
	// those made invalid before; with a repair, what became of each.
	Damaged []DamagedPath `json:"damaged,omitempty"`
	Seconds float64       `json:"seconds"`
}

// Verify asks the node to check every object against its digest and
// every path's tree.
func (c *Client) Verify(ctx context.Context) (*VerifyReport, error) {
	return c.VerifyWith(ctx, &VerifyRequest{})
}

// VerifyWith is Verify as req says: with Repair, the node also repairs
// what it finds damaged.
func (c *Client) VerifyWith(ctx context.Context, req *VerifyRequest) (*VerifyReport, error) {
	var rep VerifyReport
	return &rep, c.post(ctx, "/api/v1/verify", req, &rep)
}

// dhtStatsWait bounds the wait for the DHT provider's figures, which go
// through its keystore's worker: a status (or a scrape) does not wait
// behind a large batch of announcements.
const dhtStatsWait = 250 * time.Millisecond

// status gathers the node's status, from counters only; with peers, it
// lists the connected peers too.
func (n *Node) status(ctx context.Context, peers bool) (*Status, error) {
	st, err := n.store.Stats()
	if err != nil {
		return nil, err
	}
	tot, shared, counted, err := n.pathCounts()
	if err != nil {
		return nil, err
	}
	s := &Status{
		Addrs:            []string{},
		Paths:            tot.Paths,
		PathSources:      map[string]int{},
		DiskBytes:        st.PackBytes,
		SharedCounted:    counted,
		BytesStored:      st.ChunkBytes,
		BytesLogical:     tot.NarBytes,
		Chunks:           st.Chunks,
		ChunksCompressed: st.Frames,
		Directories:      st.Directories,
		HTTPListen:       n.HTTPAddr(),
		DaemonSocket:     n.cfg.DaemonSocket,
		ImportsRunning:   n.importsRunning.Load(),
		GarbageBytes:     n.store.DroppedBytes(),
	}
	for src, count := range tot.BySource {
		s.PathSources[sourceLabel(src)] += count
	}
	s.UpstreamBytesReceived = n.upstreamBytes()
	s.UpstreamHits, s.UpstreamMisses = n.upstreamLookups()
	if counted {
		s.SharedPaths, s.PrivatePaths = shared, tot.Paths-shared
	}
	n.limitStatus(s, tot)
	s.LocalShared, s.LocalScanned = n.local.counts()
	nc := n.narCacheStats()
	s.NARCacheBytes, s.NARCacheMax, s.NARCacheEntries, s.NARCacheHits = nc.Bytes, nc.Max, nc.Entries, nc.Hits
	if tot.NarBytes > 0 {
		s.DedupRatio = float64(st.ChunkBytes) / float64(tot.NarBytes)
	}
	if n.signKey != nil {
		s.PublicKey = n.signKey.Public().String()
	}
	if p := n.p2p; p != nil {
		s.PeerID = p.host.ID().String()
		for _, a := range p.host.Addrs() {
			s.Addrs = append(s.Addrs, a.String()+"/p2p/"+s.PeerID)
		}
		connected := p.host.Network().Peers()
		s.Peers = len(connected)
		if peers {
			s.ConnectedPeers = p.peerStatus(connected)
		}
		s.P2PBytesReceived = p.client.BytesReceived()
		s.P2PBytesSent = p.server.BytesSent()
		ctx, cancel := context.WithTimeout(ctx, dhtStatsWait)
		defer cancel()
		if st, err := p.dht.Stats(ctx); err == nil {
			s.DHTOnline = st.Connectivity.Status == "online"
			s.AnnouncePending = st.Queues.PendingKeyProvides + st.Queues.PendingRegionProvides
			s.DHTQueuedKeys = st.Queues.PendingKeyProvides
			s.DHTProvidedKeys = uint64(max(st.Operations.Past.KeysProvided, 0))
		}
		if t := p.lastSweep.Load(); t != 0 {
			s.DHTLastSweep = time.Unix(0, t)
		}
	}
	return s, nil
}

func (n *Node) serveStatus(w http.ResponseWriter, r *http.Request) { n.writeStatus(w, r, false) }

// servePublicStatus is the status on the public HTTP port: the same,
// without the local paths (the daemon socket's) and the peers' addresses
// that only the node's owner needs.
func (n *Node) servePublicStatus(w http.ResponseWriter, r *http.Request) { n.writeStatus(w, r, true) }

func (n *Node) writeStatus(w http.ResponseWriter, r *http.Request, public bool) {
	s, err := n.status(r.Context(), !public)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if public {
		s.DaemonSocket = ""
	}
	writeJSON(w, http.StatusOK, s)
}

func (n *Node) serveVerify(w http.ResponseWriter, r *http.Request) {
	var req VerifyRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxMetaLine)).Decode(&req); err != nil && err != io.EOF {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	rep, err := n.verifyStore(r.Context(), req.Repair, nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// FetchRequest asks the node to fetch paths from peers.
type FetchRequest struct {
	Paths     []string `json:"paths"`
	Recursive bool     `json:"recursive"`
}

// FetchResult reports a fetch.
type FetchResult struct {
	Fetched       []string `json:"fetched"`        // paths the node got from peers
	Present       int      `json:"present"`        // paths it had already
	BytesReceived uint64   `json:"bytes_received"` // from peers, during this fetch
	ChunkBytes    uint64   `json:"chunk_bytes"`    // raw size of the chunks that moved
	NarBytes      uint64   `json:"nar_bytes"`      // NAR size of the fetched paths
	Seconds       float64  `json:"seconds"`
}

func (n *Node) serveFetch(w http.ResponseWriter, r *http.Request) {
	var req FetchRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxMetaLine)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	res, err := n.Fetch(r.Context(), req.Paths, req.Recursive)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrBadInput) || errors.Is(err, pathinfo.ErrNotFound) {
			code = http.StatusBadRequest
		}
		writeError(w, code, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// Fetch makes the node get paths (and with recursive their closures)
// from its peers.
func (n *Node) Fetch(ctx context.Context, paths []string, recursive bool) (*FetchResult, error) {
	if n.p2p == nil {
		return nil, badInput("this node runs without p2p (p2p.listen is empty)")
	}
	start := time.Now()
	before := n.p2p.client.BytesReceived()
	res := &FetchResult{Fetched: []string{}}
	// Progress: the NAR bytes of the paths to fetch, as far as they are
	// known (a closure is found as it goes).
	op := operationOf(ctx)
	op.phase("fetching", "bytes", 0)
	var done, total uint64
	seen := map[string]bool{}
	queue := append([]string(nil), paths...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		sp, err := storepath.Parse(n.cfg.StoreDir, p)
		if err != nil {
			return nil, badInput("%v", err)
		}
		info, err := n.index.Get(sp.Hash)
		if err == nil {
			res.Present++
		} else if errors.Is(err, pathinfo.ErrNotFound) {
			j, err := n.p2p.fetch.Start(ctx, sp.Hash)
			if err == nil {
				size := j.Info().NarSize
				total += size
				op.set(done, total)
				info, err = waitFetch(ctx, j, op, done)
				done += size
				op.set(done, total)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w on any peer", p, err)
			}
			res.ChunkBytes += j.ChunkBytes()
			res.Fetched = append(res.Fetched, info.StorePath)
			res.NarBytes += info.NarSize
		} else {
			return nil, err
		}
		if recursive {
			queue = append(queue, info.References...)
		}
	}
	res.BytesReceived = n.p2p.client.BytesReceived() - before
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// waitFetch waits until a fetch job has made its path valid, telling op
// how far it is from base: the chunk bytes received, of the NAR's size (an
// estimate: short of the chunks the node had, it jumps at the end).
func waitFetch(ctx context.Context, j *fetch.Job, op *operation, base uint64) (*pathinfo.Info, error) {
	if op == nil {
		return j.Wait(ctx)
	}
	type result struct {
		info *pathinfo.Info
		err  error
	}
	waited := make(chan result, 1)
	go func() {
		info, err := j.Wait(ctx)
		waited <- result{info, err}
	}()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case r := <-waited:
			return r.info, r.err
		case <-tick.C:
			op.set(base+min(j.ChunkBytes(), j.Info().NarSize), 0)
		}
	}
}

// Fetch asks the node to fetch paths from peers.
func (c *Client) Fetch(ctx context.Context, req *FetchRequest) (*FetchResult, error) {
	var res FetchResult
	return &res, c.post(ctx, "/api/v1/fetch", req, &res)
}
