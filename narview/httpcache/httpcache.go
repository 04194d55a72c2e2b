// Package httpcache serves the Nix binary cache protocol over HTTP:
// /nix-cache-info, /<hash>.narinfo and the NARs they point at, rendered on
// the fly from castore.
//
// One node offers two views of the same paths. The root view advertises
// uncompressed NARs (Compression: none), the fastest on a LAN, served with
// a Content-Length so that file contents go out by sendfile. The /zstd view
// (a substituter URL of http://host:port/zstd) advertises .nar.zst. Either
// view answers any of .nar, .nar.zst and .nar.xz. NAR URLs carry the
// NarHash (nar/<hash>-<narhash>.nar), so a client holding a stale narinfo
// gets a 404, never the wrong bytes.
//
// An uncompressed NAR is served with Accept-Ranges and honours a single
// byte range (206, or 416 when it lies past the end; a malformed or
// multi-range header, or any If-Range, gets the whole NAR), so that Nix
// can resume a broken download. Compressed NARs are not ranged: a .nar.zst
// is spliced from frames made in the background, so its bytes change once
// they are made. A .nar.xz is compressed per request, costs an encoder of
// its own, and is advertised by no narinfo here: at most MaxXz run at
// once, and more get 503 with Retry-After before any byte of body.
//
// GuixHandler (guix.go) serves Guix's substitute protocol from the same
// Paths and NAR code. Each handler answers only for the paths of its
// store directory: the other store's path is a 404.
package httpcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/felixge/httpsnoop"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Paths is what the handler needs of the node.
type Paths interface {
	// Info returns the path info for a store-path hash part, from wherever
	// the node can get it, or an error wrapping pathinfo.ErrNotFound.
	Info(ctx context.Context, hash string) (*pathinfo.Info, error)
	// NAR writes the path's NAR to w, compressed as asked (one of the
	// Compression constants).
	NAR(ctx context.Context, info *pathinfo.Info, compression nar.Compression, w io.Writer) error
	// NARRange writes n bytes of the path's uncompressed NAR from offset
	// off to w; the range lies within the NAR.
	NARRange(ctx context.Context, info *pathinfo.Info, off, n int64, w io.Writer) error
	// NARSize returns the size of the whole NAR so compressed, when it is
	// known before it is made (a NAR kept as a file): narinfos then give
	// its FileSize and responses a Content-Length.
	NARSize(info *pathinfo.Info, compression nar.Compression) (int64, bool)
}

// Options configure a Handler.
type Options struct {
	StoreDir string
	Priority int // nix-cache-info Priority; lower wins
	// MaxXz bounds the .nar.xz responses being compressed at once (0:
	// DefaultMaxXz). Each holds an xz encoder of several megabytes and a
	// core's worth of CPU, for as long as its client reads.
	MaxXz int
	Log   *slog.Logger
}

// DefaultMaxXz is MaxXz when unset.
const DefaultMaxXz = 4

// xzRetryAfter is the Retry-After, in seconds, of a .nar.xz refused for
// want of a free encoder.
const xzRetryAfter = "10"

// Handler is the binary cache http.Handler.
type Handler struct {
	paths Paths
	opts  Options
	xz    chan struct{} // a token per .nar.xz response running
}

// New returns a Handler serving paths.
func New(paths Paths, opts Options) *Handler {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxXz <= 0 {
		opts.MaxXz = DefaultMaxXz
	}
	return &Handler{paths: paths, opts: opts, xz: make(chan struct{}, opts.MaxXz)}
}

// getOrHead answers 405 to any method but GET and HEAD, and says whether
// the request may go on.
func getOrHead(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	p := r.URL.Path
	view := nar.CompressionNone
	for _, c := range []nar.Compression{nar.CompressionZstd, nar.CompressionXz} {
		if rest, ok := strings.CutPrefix(p, "/"+string(c)+"/"); ok {
			view, p = c, "/"+rest
		}
	}
	switch {
	case p == "/nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		fmt.Fprintf(w, "StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", h.opts.StoreDir, h.opts.Priority)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		h.serveNarinfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"), view)
	case strings.HasPrefix(p, "/nar/"):
		h.serveNAR(w, r, p[len("/nar/"):])
	case strings.HasPrefix(p, "/log/"):
		http.Error(w, "no build logs here", http.StatusNotFound)
	default:
		http.NotFound(w, r)
	}
}

// info looks a hash part up and writes the error response if that fails.
func (h *Handler) info(w http.ResponseWriter, r *http.Request, hash string) *pathinfo.Info {
	if err := storepath.ValidateHash(hash); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil
	}
	info, err := h.paths.Info(r.Context(), hash)
	switch {
	case err == nil && path.Dir(info.StorePath) != h.opts.StoreDir:
		// The other store's path (Nix's or Guix's): served on its own
		// listener only.
		http.Error(w, "no such path", http.StatusNotFound)
	case err == nil:
		return info
	case errors.Is(err, pathinfo.ErrNotFound):
		http.Error(w, "no such path", http.StatusNotFound)
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
	default:
		h.opts.Log.Error("looking up path", "hash", hash, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
	return nil
}

// narURL is the URL (relative to the cache root) of a path's NAR; it
// names the NarHash, so that a stale narinfo never gets another NAR.
func narURL(info *pathinfo.Info, narHash string, c nar.Compression) string {
	return "nar/" + info.HashPart() + "-" + narHash[len("sha256:"):] + c.Suffix()
}

// narinfoBufs holds buffers for narinfo texts: a narinfo request is
// mostly Go's per-request cost, and its garbage showed in profiles.
var narinfoBufs = sync.Pool{New: func() any { return new([]byte) }}

func (h *Handler) serveNarinfo(w http.ResponseWriter, r *http.Request, hash string, compression nar.Compression) {
	info := h.info(w, r, hash)
	if info == nil {
		return
	}
	buf := narinfoBufs.Get().(*[]byte)
	defer narinfoBufs.Put(buf)
	var fileSize uint64
	if size, ok := h.paths.NARSize(info, compression); ok {
		fileSize = uint64(size)
	}
	*buf = appendNarinfo((*buf)[:0], info, compression, fileSize)
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(*buf)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(*buf)
}

// appendNarinfo appends a path's narinfo, pointing at its NAR in the given
// compression, fileSize bytes (0: not known, no FileSize), to b.
func appendNarinfo(b []byte, info *pathinfo.Info, c nar.Compression, fileSize uint64) []byte {
	narHash := info.NarHash.String()
	ni := narinfo.NarInfo{
		StorePath: info.StorePath, URL: narURL(info, narHash, c), Compression: string(c),
		NarHash: info.NarHash, NarSize: info.NarSize, References: pathinfo.BaseNames(info.References),
		Sigs: info.Sigs, CA: info.CA, FileSize: fileSize,
	}
	if info.Deriver != "" {
		ni.Deriver = info.Deriver[strings.LastIndexByte(info.Deriver, '/')+1:]
	}
	return ni.Append(b)
}

func (h *Handler) serveNAR(w http.ResponseWriter, r *http.Request, name string) {
	compression := nar.Compression("")
	for _, c := range nar.Compressions {
		if base, ok := strings.CutSuffix(name, c.Suffix()); ok && !strings.HasSuffix(base, ".nar") {
			compression, name = c, base
		}
	}
	hash, narHash, ok := strings.Cut(name, "-")
	if compression == "" || !ok {
		http.Error(w, "NAR URLs are nar/<hash>-<narhash>.nar[.zst|.xz]", http.StatusBadRequest)
		return
	}
	info := h.info(w, r, hash)
	if info == nil {
		return
	}
	if want := info.NarHash.String()[len("sha256:"):]; narHash != want {
		http.Error(w, "this node holds a different NAR for that path", http.StatusNotFound)
		return
	}
	h.writeNAR(w, r, info, compression, nil)
}

// writeNAR answers a request for a path's NAR, compressed as asked. With
// encode, the NAR goes out uncompressed through the encoder encode makes
// on the body (the Guix listener's gzip), unranged and with no length.
func (h *Handler) writeNAR(w http.ResponseWriter, r *http.Request, info *pathinfo.Info, compression nar.Compression, encode func(io.Writer) io.WriteCloser) {
	w.Header().Set("Content-Type", "application/x-nix-nar")
	status, off, n := http.StatusOK, int64(0), int64(-1)
	if compression == nar.CompressionNone && encode == nil {
		size := int64(info.NarSize)
		w.Header().Set("Accept-Ranges", "bytes")
		var code int
		if r.Header.Get("If-Range") == "" { // no validator is ever sent: none matches
			off, n, code = parseRange(r.Header.Get("Range"), size)
		}
		switch code {
		case http.StatusRequestedRangeNotSatisfiable:
			w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			http.Error(w, "range not satisfiable", code)
			return
		case http.StatusPartialContent:
			status = code
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		default:
			off, n = 0, -1
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
	}
	if compression != nar.CompressionNone && encode == nil {
		if size, ok := h.paths.NARSize(info, compression); ok {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	if compression == nar.CompressionXz {
		select {
		case h.xz <- struct{}{}:
			defer func() { <-h.xz }()
		default:
			w.Header().Set("Retry-After", xzRetryAfter)
			http.Error(w, "too many .nar.xz responses at once; .nar and .nar.zst are not limited", http.StatusServiceUnavailable)
			return
		}
	}
	body, started := startOnFirstByte(w, status)
	var err error
	switch {
	case n >= 0:
		err = h.paths.NARRange(r.Context(), info, off, n, body)
	case encode != nil:
		enc := encode(body)
		if err = h.paths.NAR(r.Context(), info, compression, enc); err == nil {
			err = enc.Close()
		}
	default:
		err = h.paths.NAR(r.Context(), info, compression, body)
	}
	if err != nil {
		gone := clientGone(r, err)
		if gone {
			h.opts.Log.Debug("client left during a NAR", "path", info.StorePath, "err", err)
		} else {
			h.opts.Log.Error("serving NAR", "path", info.StorePath, "err", err)
		}
		if !started() && !gone {
			// Whatever kept the node from sending the NAR, the client is
			// told it is not here: Nix then takes it from its next
			// substituter, where a 5xx would fail the substitution.
			w.Header().Del("Content-Length")
			w.Header().Del("Content-Range")
			http.Error(w, "no such path", http.StatusNotFound)
			return
		}
		// The status line is gone; cut the connection so that the client
		// sees a broken transfer, not a short NAR that looks complete.
		panic(http.ErrAbortHandler)
	}
}

// startOnFirstByte returns the body writer of a NAR response, which sends
// the status with the first byte, so that a NAR that fails before it still
// gets an error status line; started reports whether it has. The wrapper
// (httpsnoop's) keeps the ResponseWriter's ReadFrom: sendfile underneath.
func startOnFirstByte(w http.ResponseWriter, status int) (body http.ResponseWriter, started func() bool) {
	sent := false
	start := func() {
		if !sent {
			sent = true
			w.WriteHeader(status)
		}
	}
	return httpsnoop.Wrap(w, httpsnoop.Hooks{
		Write: func(next httpsnoop.WriteFunc) httpsnoop.WriteFunc {
			return func(p []byte) (int, error) { start(); return next(p) }
		},
		ReadFrom: func(next httpsnoop.ReadFromFunc) httpsnoop.ReadFromFunc {
			return func(r io.Reader) (int64, error) { start(); return next(r) }
		},
	}), func() bool { return sent }
}

// parseRange reads a Range header for a body of size bytes. It returns
// 206 and the range (offset and length) for a single satisfiable range,
// 416 for one that starts past the end (or an empty suffix), and 200 for
// no header, a malformed one or several ranges: the whole body then.
func parseRange(h string, size int64) (off, n int64, code int) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, http.StatusOK
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, http.StatusOK
	}
	if first == "" { // the last bytes
		k, ok := parseDigits(last)
		switch {
		case !ok:
			return 0, 0, http.StatusOK
		case k == 0:
			return 0, 0, http.StatusRequestedRangeNotSatisfiable
		}
		k = min(k, size)
		return size - k, k, http.StatusPartialContent
	}
	a, ok := parseDigits(first)
	if !ok {
		return 0, 0, http.StatusOK
	}
	b := size - 1
	if last != "" {
		if b, ok = parseDigits(last); !ok || b < a {
			return 0, 0, http.StatusOK
		}
	}
	if a >= size {
		return 0, 0, http.StatusRequestedRangeNotSatisfiable
	}
	b = min(b, size-1)
	return a, b - a + 1, http.StatusPartialContent
}

// parseDigits parses a non-negative decimal number of digits only.
func parseDigits(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// clientGone reports whether err only says that the client hung up or
// stopped reading.
func clientGone(r *http.Request, err error) bool {
	return r.Context().Err() != nil || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, os.ErrDeadlineExceeded) // it stopped reading (the server's write-progress timeout)
}
