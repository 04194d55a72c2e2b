package httpcache

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/p2pstore/p2pstore/internal/cache"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// The Guix listener: guix publish's routes, at the root of a listener of
// its own, for the paths of the Guix store.
//
//   - /<hash>.narinfo in Guix's layout: the path's signed Guix narinfo
//     (Info.GuixNarinfo) above its Signature line byte for byte, or an
//     unsigned one for a path nobody signed for Guix; then this node's NAR
//     entries. Cache-Control max-age says how long a client may keep it
//     (TTL) or a 404 (NegativeTTL), as guix publish --ttl and
//     --negative-ttl do.
//   - /nar/<compression>/<basename> and /nar/<basename>: none, zstd (the
//     stored frames spliced, as the Nix view does) and gzip (compressed
//     here, at a fast level). lzip, which Guix's build farm offers, is
//     not: its worthwhile levels compress at 1.3-2.3 MB/s, and lzip -0
//     (4.6 times zstd -3's time) makes files 2% smaller than zstd's
//     (BENCHMARKS.md, Guix (issue 18), "lzip"); Guix clients since 1.3
//     (2021) take zstd.
//   - FileSize for all the NAR entries or for none: Guix pairs FileSize
//     lines with URLs by position and drops the entries past the shortest
//     list. Once the zstd NAR's size is known (its frames are made), the
//     narinfo offers zstd and none with their sizes, which guix substitute
//     reports as the download size and picks the smaller by; gzip, whose
//     size is known only once it is sent, is then left out (still served).
//     Before, it offers zstd, gzip and none without sizes, and Guix's
//     client prefers them in that order.
//   - /nix-cache-info is answered as guix publish does (Guix never asks).
//   - A narinfo's text is made once and kept (guixText) while its record
//     stays the same: a Guix client asks for a closure's narinfos at
//     once, and again on its next build.

// GuixOptions configure a GuixHandler.
type GuixOptions struct {
	StoreDir    string        // /gnu/store
	TTL         time.Duration // max-age of a narinfo (0: DefaultGuixTTL)
	NegativeTTL time.Duration // max-age of a narinfo 404 (0: DefaultGuixNegativeTTL)
	Log         *slog.Logger
}

// DefaultGuixTTL keeps a narinfo an hour: a path may leave the node
// (storage.max_bytes), and a client holding its narinfo then asks in vain
// until it expires.
const DefaultGuixTTL = time.Hour

// DefaultGuixNegativeTTL is short: a path missing now may come from a
// peer or an import in a minute. (Guix's client keeps a 404 two minutes
// when the server says nothing.)
const DefaultGuixNegativeTTL = time.Minute

// GuixCompressions are the compressions the Guix listener offers, in the
// narinfo's order.
var GuixCompressions = []string{"zstd", "gzip", "none"}

// GuixHandler serves Guix's substitute protocol.
type GuixHandler struct {
	h                 *Handler // its NAR serving
	opts              GuixOptions
	maxAge, maxAgeNeg string
	texts             *cache.Map[string, *guixText] // by hash part
}

// guixTexts bounds the narinfo texts a GuixHandler keeps. Making one
// parses the signed narinfo again and took half the handler's time per
// narinfo (guix substitute asks up to 1,000 at once on one connection);
// a few MB hold the narinfos of several such closures.
const guixTexts = 4 << 10

// guixText is a narinfo text made for a record, with the fields of the
// record it was made from (all that AppendGuixNarinfo reads). It serves
// only a record that has them all: one the node has replaced since (a
// new Guix narinfo, another NAR) is made anew, so nothing invalidates
// the cache, and a stale text cannot be served.
type guixText struct {
	guixNarinfo, storePath, deriver string
	narHash                         storepath.NarHash
	narSize                         uint64
	references                      []string
	text                            []byte
	contentLength                   []string // a header value
	// sized says the text has FileSizes; one without is made again
	// after guixSizeRetry, when the zstd NAR's size may be known.
	sized bool
	made  time.Time
}

// guixSizeRetry is how long a narinfo text made before its zstd NAR's
// size was known is served as it is: finding the size walks the path's
// tree, which is not done for every request.
const guixSizeRetry = 10 * time.Second

func newGuixText(info *pathinfo.Info, text []byte, sized bool) *guixText {
	return &guixText{guixNarinfo: info.GuixNarinfo, storePath: info.StorePath, deriver: info.Deriver,
		narHash: info.NarHash, narSize: info.NarSize, references: slices.Clone(info.References),
		text: text, contentLength: []string{strconv.Itoa(len(text))}, sized: sized, made: time.Now()}
}

// of reports whether t was made from info's fields.
func (t *guixText) of(info *pathinfo.Info) bool {
	return t.guixNarinfo == info.GuixNarinfo && t.storePath == info.StorePath && t.deriver == info.Deriver &&
		t.narHash == info.NarHash && t.narSize == info.NarSize && slices.Equal(t.references, info.References)
}

// text returns the narinfo text the listener serves for info, made once
// for as long as info's fields stay the same (and its sizes are known).
func (g *GuixHandler) text(info *pathinfo.Info) (*guixText, error) {
	hash := info.HashPart()
	if t, ok := g.texts.Get(hash); ok && t.of(info) && (t.sized || time.Since(t.made) < guixSizeRetry) {
		return t, nil
	}
	zstdSize, sized := g.h.paths.NARSize(info, nar.CompressionZstd)
	if !sized {
		zstdSize = -1
	}
	text, err := AppendGuixNarinfo(nil, info, zstdSize)
	if err != nil {
		return nil, err
	}
	t := newGuixText(info, text, sized)
	g.texts.Put(hash, t)
	return t, nil
}

// NewGuix returns a GuixHandler serving the paths under opts.StoreDir.
func NewGuix(paths Paths, opts GuixOptions) *GuixHandler {
	if opts.TTL <= 0 {
		opts.TTL = DefaultGuixTTL
	}
	if opts.NegativeTTL <= 0 {
		opts.NegativeTTL = DefaultGuixNegativeTTL
	}
	h := New(paths, Options{StoreDir: opts.StoreDir, Log: opts.Log})
	return &GuixHandler{h: h, opts: opts,
		maxAge:    "max-age=" + strconv.Itoa(int(opts.TTL.Seconds())),
		maxAgeNeg: "max-age=" + strconv.Itoa(int(opts.NegativeTTL.Seconds())),
		texts:     cache.New[string, *guixText](guixTexts),
	}
}

func (g *GuixHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !getOrHead(w, r) {
		return
	}
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "StoreDir: %s\nWantMassQuery: 0\nPriority: 100\n", g.opts.StoreDir)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		g.serveNarinfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	case strings.HasPrefix(p, "/nar/"):
		g.serveNAR(w, r, p[len("/nar/"):])
	case strings.HasPrefix(p, "/log/"):
		http.Error(w, "no build logs here", http.StatusNotFound)
	default:
		http.NotFound(w, r)
	}
}

func (g *GuixHandler) serveNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	// A 404 gets the negative TTL; an answer replaces it below.
	w.Header().Set("Cache-Control", g.maxAgeNeg)
	info := g.h.info(w, r, hash)
	if info == nil {
		return
	}
	t, err := g.text(info)
	if err != nil {
		// A record the node took checked; it cannot be read now.
		g.opts.Log.Error("Guix narinfo", "path", info.StorePath, "err", err)
		http.Error(w, "no such path", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", g.maxAge)
	h["Content-Type"] = guixNarinfoType
	h["Content-Length"] = t.contentLength
	if r.Method == http.MethodHead {
		return
	}
	w.Write(t.text)
}

// guixNarinfoType is the Content-Type of a Guix narinfo: one slice for
// every answer (as a text's contentLength is for each of its answers),
// which nothing changes: a server copies or writes out the header it is
// given, and no handler here appends to a value it did not set.
var guixNarinfoType = []string{"application/x-nix-narinfo"}

// GuixNarinfo returns the Guix narinfo of a path of the Guix store: its
// signed one (Info.GuixNarinfo), else one made from the record, unsigned.
// The NAR entries of the signed text that lie below its Signature line
// are dropped; those above it (narinfos signed before 2022) stay, being
// signed.
func GuixNarinfo(info *pathinfo.Info) (*guix.NarInfo, error) {
	if info.GuixNarinfo != "" {
		ni, err := guix.Parse([]byte(info.GuixNarinfo))
		if err != nil {
			return nil, err
		}
		ni.NARs = ni.NARs[:ni.SignedNARs()]
		return ni, nil
	}
	ni := &guix.NarInfo{StorePath: info.StorePath, NarHash: info.NarHash, NarSize: info.NarSize,
		References: pathinfo.BaseNames(info.References)}
	if info.Deriver != "" {
		ni.Deriver = path.Base(info.Deriver)
	}
	return ni, nil
}

// AppendGuixNarinfo appends the narinfo the Guix listener serves for a
// path to b: GuixNarinfo's, with this node's NAR entries. zstdSize is
// the zstd NAR's size, or < 0 when it is not known: the entries then have
// no FileSize.
func AppendGuixNarinfo(b []byte, info *pathinfo.Info, zstdSize int64) ([]byte, error) {
	ni, err := GuixNarinfo(info)
	if err != nil {
		return b, err
	}
	base := path.Base(info.StorePath)
	if zstdSize >= 0 {
		ni.NARs = append(ni.NARs,
			guix.NAR{URL: guix.NARURL("zstd", base), Compression: "zstd", FileSize: uint64(zstdSize)},
			guix.NAR{URL: guix.NARURL("none", base), Compression: "none", FileSize: info.NarSize})
		return ni.Append(b), nil
	}
	for _, c := range GuixCompressions {
		ni.NARs = append(ni.NARs, guix.NAR{URL: guix.NARURL(c, base), Compression: c})
	}
	return ni.Append(b), nil
}

// gzipWriters are gzip encoders of NAR responses: each holds some hundred
// KiB of tables.
var gzipWriters = sync.Pool{New: func() any {
	z, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
	return z
}}

// pooledGzip returns its encoder to gzipWriters when closed.
type pooledGzip struct{ *gzip.Writer }

func (z pooledGzip) Close() error {
	err := z.Writer.Close()
	gzipWriters.Put(z.Writer)
	return err
}

func newGzip(w io.Writer) io.WriteCloser {
	z := gzipWriters.Get().(*gzip.Writer)
	z.Reset(w)
	return pooledGzip{z}
}

// serveNAR answers nar/<compression>/<basename> and nar/<basename> (the
// basename unescaped already by the URL parser).
func (g *GuixHandler) serveNAR(w http.ResponseWriter, r *http.Request, rest string) {
	compression, base, ok := strings.Cut(rest, "/")
	if !ok {
		compression, base = "none", rest
	}
	var encode func(io.Writer) io.WriteCloser
	c := nar.CompressionNone
	switch compression {
	case "none":
	case "zstd":
		c = nar.CompressionZstd
	case "gzip":
		encode = newGzip
	default:
		http.Error(w, fmt.Sprintf("unknown compression %q: this node serves %s", compression, strings.Join(GuixCompressions, ", ")), http.StatusNotFound)
		return
	}
	if _, err := storepath.ParseBase(base); err != nil {
		http.Error(w, "NAR URLs are nar/[<compression>/]<store path basename>: "+err.Error(), http.StatusBadRequest)
		return
	}
	info := g.h.info(w, r, base[:storepath.HashLen])
	if info == nil {
		return
	}
	if path.Base(info.StorePath) != base {
		http.Error(w, "no such path", http.StatusNotFound)
		return
	}
	g.h.writeNAR(w, r, info, c, encode)
}
