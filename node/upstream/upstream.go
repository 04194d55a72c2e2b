// Package upstream is the node's client of upstream HTTP binary caches
// (upstream.substituters): it looks a path up on all of them at once and
// opens the NAR of the first trusted answer as a decompressed stream.
//
// Decisions:
//   - Upstreams are asked in parallel; the first narinfo with a signature
//     that verifies wins. A signature that names a trusted key and does
//     not verify is dropped, never a reason to refuse the path (a rotated
//     key leaves a stale one); the others are kept as the upstream sent
//     them (pathinfo.Info.DropBadSigs).
//   - 404, 410 and 403 mean "not there" (S3 answers 403 for a missing
//     key). Misses are remembered for MissTTL, errors for ErrorTTL, per
//     upstream; a found path for FoundTTL, so that a lookup that finished
//     after its client gave up serves the next request.
//   - An upstream that fails breakerFails times in a row is skipped, then
//     re-probed with GET nix-cache-info, with a backoff doubling to
//     maxBreakerOpen: a dead cache costs nothing per request.
//   - Timeouts: connect 10 s, response headers 10 s, 30 s without a byte
//     on a body. A NAR body that breaks is resumed with a Range request
//     from the compressed offset, feeding the same decompressor, or read
//     again from the start and skipped to the offset when the upstream
//     ignores ranges, at most Retries times.
//   - With Config.Guix, the upstreams are Guix substitute servers:
//     narinfos in Guix's layout, checked with Guix keys and kept as
//     signed; the zstd NAR is taken first, then lzip (guixPreference).
//   - xz NARs are decoded by the xz command where it is installed (twice
//     as fast as ulikunitz/xz, which decodes slower than a 100 mbit link
//     brings them in), by ulikunitz/xz otherwise; lzip NARs likewise by
//     the lzip command, by internal/lzip otherwise. A command runs under
//     the NAR's context: Close kills it and waits for it, and its
//     stderr is the error of a stream it fails.
package upstream

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/p2pstore/p2pstore/internal/cache"
	"github.com/p2pstore/p2pstore/internal/lzip"
	"github.com/p2pstore/p2pstore/narview/guix"
	"github.com/p2pstore/p2pstore/narview/narinfo"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Config configures a Client. Zero durations take the defaults below.
type Config struct {
	URLs     []string            // the binary caches, http or https
	Keys     []narinfo.PublicKey // a narinfo needs a signature by one of them
	StoreDir string
	Log      *slog.Logger

	Transport   http.RoundTripper // nil: one with the timeouts above
	MissTTL     time.Duration     // a path an upstream lacks
	ErrorTTL    time.Duration     // a path an upstream failed on
	FoundTTL    time.Duration     // a path found, not yet pulled
	IdleTimeout time.Duration     // a NAR body that sends nothing this long is broken
	Retries     int               // resumptions of one NAR body
	BreakerOpen time.Duration     // first pause of a failing upstream before its re-probe

	// Guix makes the upstreams Guix substitute servers (guix publish, the
	// build farms): narinfos in Guix's layout of paths under StoreDir
	// (Guix's), trusted when a key of GuixKeys signed them, their text
	// kept as the path's Info.GuixNarinfo; Keys is not used.
	Guix     bool
	GuixKeys []guix.PublicKey

	// Skip, when set, says an upstream (Path.Upstream) is not to be asked
	// for a path now: it sent the path's NAR broken or wrong a moment
	// ago, and another upstream may send it whole.
	Skip func(upstream, hash string) bool
}

const (
	defaultMissTTL     = time.Minute
	defaultErrorTTL    = 15 * time.Second
	defaultFoundTTL    = 5 * time.Minute
	defaultIdleTimeout = 30 * time.Second
	defaultRetries     = 3
	connectTimeout     = 10 * time.Second
	headerTimeout      = 10 * time.Second
	lookupTimeout      = 30 * time.Second // a lookup goes on this long after its client gave up

	breakerFails    = 3                // consecutive failures that open an upstream's breaker
	minBreakerOpen  = 30 * time.Second // first pause before a re-probe
	maxBreakerOpen  = 5 * time.Minute
	rememberedPaths = 64 << 10 // bound of each of the miss and found caches
)

// Path is a path an upstream offers: its metadata, with the upstream's
// signatures less those that name a trusted key and fail, and where its
// NAR is.
type Path struct {
	Info        *pathinfo.Info
	URL         string // absolute
	Compression string // as the narinfo says; "" was read as bzip2
	Upstream    string // the upstream's URL, as Config.Skip is told it
}

// Client asks upstream caches for paths.
type Client struct {
	cfg      Config
	http     *http.Client
	ups      []*upstream
	received atomic.Uint64
	hits     atomic.Uint64 // lookups an upstream answered
	missed   atomic.Uint64 // lookups none did

	misses *cache.Map[string, time.Time] // upstream index and hash part: until
	found  *cache.Map[string, foundPath]

	mu      sync.Mutex
	lookups map[string]*lookup // running, by hash part
}

type foundPath struct {
	p     *Path
	until time.Time
}

type lookup struct {
	done chan struct{}
	p    *Path
	err  error
}

// upstream is one cache and its breaker.
type upstream struct {
	base *url.URL // path ends in "/"
	name string

	mu        sync.Mutex
	fails     int
	openUntil time.Time // skipped until then, then re-probed
	openFor   time.Duration
	probing   bool
}

// New checks the URLs and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MissTTL == 0 {
		cfg.MissTTL = defaultMissTTL
	}
	if cfg.ErrorTTL == 0 {
		cfg.ErrorTTL = defaultErrorTTL
	}
	if cfg.FoundTTL == 0 {
		cfg.FoundTTL = defaultFoundTTL
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = defaultRetries
	}
	if cfg.BreakerOpen == 0 {
		cfg.BreakerOpen = minBreakerOpen
	}
	if cfg.Transport == nil {
		cfg.Transport = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   connectTimeout,
			ResponseHeaderTimeout: headerTimeout,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		}
	}
	c := &Client{cfg: cfg, http: &http.Client{Transport: cfg.Transport},
		misses: cache.New[string, time.Time](rememberedPaths), found: cache.New[string, foundPath](rememberedPaths),
		lookups: map[string]*lookup{}}
	for _, s := range cfg.URLs {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("upstream %q: want an http:// or https:// binary cache URL", s)
		}
		u.RawQuery, u.Fragment = "", ""
		if !strings.HasSuffix(u.Path, "/") {
			u.Path += "/"
		}
		c.ups = append(c.ups, &upstream{base: u, name: strings.TrimSuffix(u.String(), "/"), openFor: cfg.BreakerOpen})
	}
	return c, nil
}

// BytesReceived is the body bytes read from upstreams: compressed NARs
// as sent, and narinfos.
func (c *Client) BytesReceived() uint64 { return c.received.Load() }

// Lookups counts the lookups that asked upstreams (one per path however
// many ask at once): those an upstream answered with a trusted narinfo,
// and the others. Answers from memory (a path found or missed a moment
// ago, an upstream being skipped) are not counted.
func (c *Client) Lookups() (hits, misses uint64) { return c.hits.Load(), c.missed.Load() }

// Lookup finds the path with this hash part on the upstreams. It answers
// pathinfo.ErrNotFound (wrapped) when none has a trusted narinfo of it.
// The lookup itself goes on after ctx ends (up to lookupTimeout), and
// what it finds is kept for the next call.
func (c *Client) Lookup(ctx context.Context, hash string) (*Path, error) {
	if p := c.Cached(hash); p != nil {
		return p, nil
	}
	c.mu.Lock()
	l := c.lookups[hash]
	if l == nil {
		l = &lookup{done: make(chan struct{})}
		c.lookups[hash] = l
		go c.run(l, hash)
	}
	c.mu.Unlock()
	select {
	case <-l.done:
		return l.p, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Cached returns the path a lookup found (for FoundTTL), without asking
// the upstreams; nil when there is none or Skip now refuses its upstream
// (its NAR came broken), so that the next Lookup asks the others. Kept
// while its pull runs: a narinfo asked as the pull starts is answered
// from here, not by the upstream a second time.
func (c *Client) Cached(hash string) *Path {
	if f, ok := c.found.Get(hash); ok && time.Now().Before(f.until) && !c.skip(f.p.Upstream, hash) {
		return f.p
	}
	return nil
}

func (c *Client) run(l *lookup, hash string) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	l.p, l.err = c.lookup(ctx, hash)
	if l.err == nil {
		c.found.Put(hash, foundPath{l.p, time.Now().Add(c.cfg.FoundTTL)})
	}
	c.mu.Lock()
	delete(c.lookups, hash)
	c.mu.Unlock()
	close(l.done)
}

// lookup asks every upstream not known to lack the path, in parallel.
func (c *Client) lookup(ctx context.Context, hash string) (*Path, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		p   *Path
		err error
	}
	answers := make(chan answer, len(c.ups))
	asked := 0
	now := time.Now()
	for i, u := range c.ups {
		key := strconv.Itoa(i) + ":" + hash
		if until, ok := c.misses.Get(key); ok && now.Before(until) {
			continue
		}
		if c.skip(u.name, hash) || !c.available(u) {
			continue
		}
		asked++
		go func() {
			p, err := c.narinfo(ctx, u, hash)
			switch {
			case err == nil:
				u.succeeded()
			case errors.Is(err, pathinfo.ErrNotFound):
				u.succeeded()
				c.misses.Put(key, time.Now().Add(c.cfg.MissTTL))
			case ctx.Err() != nil:
				// Another upstream answered, or the lookup timed out
				// (that counts against this one).
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					u.failed(c)
				}
			default:
				c.cfg.Log.Warn("upstream narinfo", "upstream", u.name, "hash", hash, "err", err)
				u.failed(c)
				c.misses.Put(key, time.Now().Add(c.cfg.ErrorTTL))
			}
			answers <- answer{p, err}
		}()
	}
	for range asked {
		a := <-answers
		if a.err == nil {
			c.hits.Add(1)
			return a.p, nil
		}
	}
	if asked > 0 {
		c.missed.Add(1)
	}
	return nil, fmt.Errorf("%s: no upstream has a trusted narinfo: %w", hash, pathinfo.ErrNotFound)
}

func (c *Client) skip(upstream, hash string) bool {
	return c.cfg.Skip != nil && c.cfg.Skip(upstream, hash)
}

// narinfo fetches and checks one upstream's narinfo for a hash part.
func (c *Client) narinfo(ctx context.Context, u *upstream, hash string) (*Path, error) {
	resp, err := c.get(ctx, u.base.JoinPath(hash+".narinfo").String(), "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusGone, http.StatusForbidden:
		return nil, pathinfo.ErrNotFound
	default:
		return nil, fmt.Errorf("narinfo: HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, max(narinfo.MaxSize, guix.MaxSize)+1))
	c.received.Add(uint64(len(body)))
	if err != nil {
		return nil, err
	}
	if c.cfg.Guix {
		return c.checkGuix(u, hash, body)
	}
	ni, err := narinfo.Parse(string(body))
	if err != nil {
		return nil, err
	}
	return c.check(u, hash, ni)
}

// check turns a parsed narinfo into a Path: it must name the path asked
// for, be well formed, and carry a signature that verifies.
func (c *Client) check(u *upstream, hash string, ni *narinfo.NarInfo) (*Path, error) {
	sp, err := storepath.Parse(c.cfg.StoreDir, ni.StorePath)
	if err != nil {
		return nil, err
	}
	if sp.Hash != hash {
		return nil, fmt.Errorf("narinfo for %s names %s", hash, ni.StorePath)
	}
	if !supported(ni.Compression) {
		c.cfg.Log.Warn("upstream NAR compression not supported", "upstream", u.name, "path", ni.StorePath, "compression", ni.Compression)
		return nil, pathinfo.ErrNotFound
	}
	dir := c.cfg.StoreDir + "/"
	info := &pathinfo.Info{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize, CA: ni.CA}
	for _, r := range ni.References {
		info.References = append(info.References, dir+r)
	}
	if ni.Deriver != "" {
		info.Deriver = dir + ni.Deriver
	}
	if err := info.Validate(c.cfg.StoreDir); err != nil {
		return nil, err
	}
	// As everywhere in the node: the upstream's signatures stand, less
	// those that name a trusted key and fail (a rotated key's).
	info.Sigs = slices.Clone(ni.Sigs)
	info.DropBadSigs(c.cfg.Keys)
	if !info.TrustedBy(c.cfg.Keys) {
		c.cfg.Log.Warn("upstream path not signed by a trusted key", "upstream", u.name, "path", ni.StorePath)
		return nil, pathinfo.ErrNotFound
	}
	ref, err := url.Parse(ni.URL)
	if err != nil {
		return nil, fmt.Errorf("narinfo URL: %w", err)
	}
	return &Path{Info: info, URL: u.base.ResolveReference(ref).String(), Compression: ni.Compression, Upstream: u.name}, nil
}

// checkGuix turns a Guix narinfo into a Path, on the terms of check: it
// must name the path asked for, be well formed, and carry a signature by
// a key of GuixKeys; its text is kept byte for byte, so that the node
// serves it still verifying. Of its NAR entries, the one in the
// compression of guixPreference that comes first.
func (c *Client) checkGuix(u *upstream, hash string, text []byte) (*Path, error) {
	ni, err := guix.Parse(text)
	if err != nil {
		return nil, err
	}
	sp, err := storepath.Parse(c.cfg.StoreDir, ni.StorePath)
	if err != nil {
		return nil, err
	}
	if sp.Hash != hash {
		return nil, fmt.Errorf("narinfo for %s names %s", hash, ni.StorePath)
	}
	dir := c.cfg.StoreDir + "/"
	info := &pathinfo.Info{StorePath: ni.StorePath, NarHash: ni.NarHash, NarSize: ni.NarSize, GuixNarinfo: string(text)}
	for _, r := range ni.References {
		info.References = append(info.References, dir+r) // in the narinfo's order, which its equivalence compares
	}
	if ni.Deriver != "" {
		info.Deriver = dir + ni.Deriver
	}
	if err := info.Validate(c.cfg.StoreDir); err != nil {
		return nil, err
	}
	if err := info.GuixTrustedBy(c.cfg.GuixKeys); err != nil {
		c.cfg.Log.Warn("upstream Guix narinfo not trusted", "upstream", u.name, "path", ni.StorePath, "err", err)
		return nil, pathinfo.ErrNotFound
	}
	for _, comp := range guixPreference {
		for _, e := range ni.NARs {
			if e.Compression != comp {
				continue
			}
			ref, err := url.Parse(e.URL)
			if err != nil {
				return nil, fmt.Errorf("narinfo URL: %w", err)
			}
			return &Path{Info: info, URL: u.base.ResolveReference(ref).String(), Compression: comp, Upstream: u.name}, nil
		}
	}
	c.cfg.Log.Warn("upstream Guix NARs in no compression the node decodes", "upstream", u.name, "path", ni.StorePath)
	return nil, pathinfo.ErrNotFound
}

// guixPreference ranks the compressions of a Guix narinfo's NARs: zstd
// decodes fastest, and the farms offer it beside lzip for what they built
// since 2021; lzip then, the farms' only NAR of older paths, and the
// fewest bytes over a farm's link (lzip -9 made go1.25.0's NAR 5.7 times
// smaller, zstd -3 3.5 times); then gzip and none, which guix publish
// offers when so configured.
var guixPreference = []string{"zstd", "lzip", "gzip", "none", "xz", "bzip2"}

// supported says whether Open can decompress a NAR so compressed.
func supported(compression string) bool {
	switch compression {
	case "", "none", "bzip2", "xz", "zstd", "gzip", "br", "lzip":
		return true
	}
	return false
}

func (c *Client) get(ctx context.Context, url, rangeHeader string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// Bodies as stored: a transparent gzip would hide the offsets that a
	// resume needs.
	req.Header.Set("Accept-Encoding", "identity")
	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}
	return c.http.Do(req)
}

// available says whether an upstream may be asked: its breaker is closed.
// An open breaker whose pause is over starts a probe.
func (c *Client) available(u *upstream) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fails < breakerFails {
		return true
	}
	if !u.probing && time.Now().After(u.openUntil) {
		u.probing = true
		go c.probe(u)
	}
	return false
}

// probe asks an upstream whose breaker is open for nix-cache-info: an
// answer closes the breaker, a failure doubles the pause.
func (c *Client) probe(u *upstream) {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout+headerTimeout)
	defer cancel()
	resp, err := c.get(ctx, u.base.JoinPath("nix-cache-info").String(), "")
	if err == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("nix-cache-info: HTTP %s", resp.Status)
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.probing = false
	if err != nil {
		u.openFor = min(2*u.openFor, maxBreakerOpen)
		u.openUntil = time.Now().Add(u.openFor)
		c.cfg.Log.Debug("upstream still down", "upstream", u.name, "err", err, "retry_in", u.openFor)
		return
	}
	u.fails, u.openFor = 0, c.cfg.BreakerOpen
	c.cfg.Log.Info("upstream back", "upstream", u.name)
}

func (u *upstream) succeeded() {
	u.mu.Lock()
	u.fails = 0
	u.mu.Unlock()
}

func (u *upstream) failed(c *Client) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fails++
	if u.fails == breakerFails {
		u.openUntil = time.Now().Add(u.openFor)
		c.cfg.Log.Warn("upstream failing; skipping it for a while", "upstream", u.name, "retry_in", u.openFor)
	}
}

// Open returns the path's NAR, decompressed, as it arrives. A body that
// breaks is resumed (see the package doc); the stream fails when that does
// not work.
func (c *Client) Open(ctx context.Context, p *Path) (io.ReadCloser, error) {
	// Close cancels ctx first, so that a decoder reading the body in a
	// goroutine of its own (the xz command's stdin) lets go of it.
	ctx, cancel := context.WithCancel(ctx)
	b := &body{c: c, ctx: ctx, url: p.URL}
	if err := b.open(); err != nil {
		cancel()
		return nil, err
	}
	// Decoders read in small pieces (xz a byte at a time): a buffer keeps
	// those off the body's Read, which restarts its idle timer each time.
	// Unbuffered, ulikunitz/xz took 36 s for 80 MB of NAR, 2.4 s with it.
	br := bufio.NewReaderSize(b, 256<<10)
	var r io.Reader
	var closer func()
	var err error
	switch p.Compression {
	case "none":
		r = br
	case "", "bzip2":
		r = bzip2.NewReader(br)
	case "xz":
		var d *decoderProcess
		if d, err = startDecoder(ctx, xzCommand, []string{"--decompress", "--stdout"}, br); err == nil {
			r, closer = d, d.stop
		} else {
			r, err = xz.NewReader(br)
		}
	case "lzip":
		var d *decoderProcess
		if d, err = startDecoder(ctx, lzipCommand, []string{"--decompress", "--stdout", "--trailing-error"}, br); err == nil {
			r, closer = d, d.stop
		} else {
			// NarSize bounds what it may decode to, and so its
			// dictionary.
			r, err = lzip.NewReader(br, int64(p.Info.NarSize))
		}
	case "zstd":
		var d *zstd.Decoder
		d, err = zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err == nil {
			r, closer = d, d.Close
		}
	case "gzip":
		r, err = gzip.NewReader(br)
	case "br":
		r = brotli.NewReader(br)
	default:
		err = fmt.Errorf("compression %q not supported", p.Compression)
	}
	if err != nil {
		cancel()
		b.Close()
		return nil, fmt.Errorf("%s: %w", p.URL, err)
	}
	return &decompressed{Reader: r, body: b, cancel: cancel, closer: closer}, nil
}

type decompressed struct {
	io.Reader
	body   *body
	cancel context.CancelFunc
	closer func()
}

// BytesReceived is the body bytes this NAR has read from the upstream so
// far, as sent (compressed), resumptions included.
func (d *decompressed) BytesReceived() uint64 { return d.body.received.Load() }

func (d *decompressed) Close() error {
	d.cancel()
	if d.closer != nil {
		d.closer()
	}
	return d.body.Close()
}

// xzCommand decodes xz NARs where it is installed: liblzma decodes twice
// as fast as ulikunitz/xz (80 MB of NAR: 1.2 s against 2.4 s here), which
// is slower than a 100 mbit link brings xz NARs in. Without it, or when
// it cannot start, ulikunitz/xz decodes.
var xzCommand = "xz"

// lzipCommand decodes lzip NARs where it is installed: go1.25.0's NAR at
// 70 MB/s through Open, about what a 100 mbit link brings in, against
// 47-50 MB/s for internal/lzip, which decodes otherwise (BENCHMARKS.md,
// Guix (issue 18), "lzip"). --trailing-error: data after the last member fails, as it
// does in internal/lzip. The command writes its output a dictionary's
// worth at a time (8 MiB at lzip -6, 32 MiB at -9): a pull sees the NAR
// in bursts, which is all the same to it.
var lzipCommand = "lzip"

// decoderProcess is a decompressing command (xz, lzip) decoding a stream
// from its stdin to its stdout.
type decoderProcess struct {
	name   string // for errors
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr bytes.Buffer // read only once the command has ended
	ended  bool
	err    error
}

// startDecoder starts a command that reads r. Its context must end before
// stop is called (Close cancels it): that kills the command and lets go
// of r, which the command's stdin copier may be reading.
func startDecoder(ctx context.Context, command string, args []string, r io.Reader) (*decoderProcess, error) {
	path, err := exec.LookPath(command)
	if err != nil {
		return nil, err
	}
	d := &decoderProcess{name: command, cmd: exec.CommandContext(ctx, path, args...)}
	d.cmd.Stdin = r
	d.cmd.Stderr = &d.stderr
	if d.out, err = d.cmd.StdoutPipe(); err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *decoderProcess) Read(p []byte) (int, error) {
	if d.ended {
		return 0, d.err
	}
	n, err := d.out.Read(p)
	if err == io.EOF {
		// Reaped here when it ends by itself; its exit status says
		// whether the stream was whole.
		d.ended, d.err = true, io.EOF
		if werr := d.cmd.Wait(); werr != nil {
			d.err = fmt.Errorf("%s: %v: %s", d.name, werr, strings.TrimSpace(d.stderr.String()))
		}
		return n, d.err
	}
	return n, err
}

// stop ends the command (its context is cancelled by then, which kills
// it) and waits for it.
func (d *decoderProcess) stop() {
	if !d.ended {
		d.ended, d.err = true, fmt.Errorf("%s: stopped", d.name)
		d.cmd.Wait()
	}
}

// ErrNotThere is the error of a NAR the upstream says it does not hold.
var ErrNotThere = errors.New("upstream does not hold the NAR")

// body is a NAR's compressed body, resumed where it broke.
type body struct {
	c    *Client
	ctx  context.Context
	url  string
	resp *http.Response
	stop context.CancelFunc // the current request's
	idle *time.Timer        // stops it after IdleTimeout without a byte
	off  int64              // compressed bytes read
	// received counts the bytes read, those of bodies read again to the
	// offset where one broke included (into the client's count too).
	received atomic.Uint64
	total    int64 // the whole body's size, -1 unknown
	tries    int
}

// open makes a request for the body from off.
func (b *body) open() error {
	ctx, stop := context.WithCancel(b.ctx)
	// Armed before anything is read, the skip of a body read again
	// included: the job's context never ends, so a read without it could
	// wait forever.
	idle := time.AfterFunc(b.c.cfg.IdleTimeout, stop)
	rng := ""
	if b.off > 0 {
		rng = "bytes=" + strconv.FormatInt(b.off, 10) + "-"
	}
	resp, err := b.c.get(ctx, b.url, rng)
	if err != nil {
		idle.Stop()
		stop()
		return err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		if b.off == 0 {
			b.total = resp.ContentLength
		} else if _, err = io.CopyN(io.Discard, &idleReader{r: resp.Body, idle: idle, timeout: b.c.cfg.IdleTimeout, received: b.count}, b.off); err != nil {
			// The upstream ignores ranges: the body again, skipped to
			// where it broke.
			err = fmt.Errorf("restarting the NAR at %d: %w", b.off, err)
		}
	case resp.StatusCode == http.StatusPartialContent && b.off > 0 &&
		strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes "+strconv.FormatInt(b.off, 10)+"-"):
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone || resp.StatusCode == http.StatusForbidden:
		err = fmt.Errorf("%s: %w", b.url, ErrNotThere)
	default:
		err = fmt.Errorf("%s: HTTP %s", b.url, resp.Status)
	}
	if err != nil {
		idle.Stop()
		resp.Body.Close()
		stop()
		return err
	}
	b.resp, b.stop, b.idle = resp, stop, idle
	return nil
}

// idleReader restarts an idle timer at each byte it reads, and counts
// them as received.
type idleReader struct {
	r        io.Reader
	idle     *time.Timer
	timeout  time.Duration
	received func(n int)
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.idle.Reset(r.timeout)
		r.received(n)
	}
	return n, err
}

func (b *body) Read(p []byte) (int, error) {
	for {
		if b.resp == nil {
			if err := b.open(); err != nil {
				if b.ctx.Err() != nil || errors.Is(err, ErrNotThere) || b.tries >= b.c.cfg.Retries {
					return 0, err
				}
				b.tries++
				if err := b.pause(); err != nil {
					return 0, err
				}
				continue
			}
		}
		n, err := b.resp.Body.Read(p)
		if n > 0 {
			b.idle.Reset(b.c.cfg.IdleTimeout)
			b.off += int64(n)
			b.count(n)
		}
		if err == nil {
			return n, nil
		}
		if err == io.EOF {
			if b.total < 0 || b.off >= b.total {
				return n, io.EOF
			}
			err = io.ErrUnexpectedEOF // short of its Content-Length
		}
		// The body broke: resume it at the next Read.
		b.closeResp()
		if b.ctx.Err() != nil {
			return n, b.ctx.Err()
		}
		if b.tries >= b.c.cfg.Retries {
			return n, fmt.Errorf("%s: broke at byte %d after %d resumptions: %w", b.url, b.off, b.tries, err)
		}
		b.tries++
		b.c.cfg.Log.Info("resuming an upstream NAR", "url", b.url, "offset", b.off, "err", err)
		if n > 0 {
			return n, nil
		}
	}
}

// count counts n bytes read from the upstream.
func (b *body) count(n int) {
	b.received.Add(uint64(n))
	b.c.received.Add(uint64(n))
}

// pause waits a little before another attempt, longer after each.
func (b *body) pause() error {
	t := time.NewTimer(time.Duration(b.tries) * 200 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-b.ctx.Done():
		return b.ctx.Err()
	}
}

func (b *body) closeResp() {
	if b.resp != nil {
		b.idle.Stop()
		b.resp.Body.Close()
		b.stop()
		b.resp = nil
	}
}

func (b *body) Close() error {
	b.closeResp()
	return nil
}
