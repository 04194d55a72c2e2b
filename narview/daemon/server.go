package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Store is what the server needs of the node.
type Store interface {
	// PathInfo returns a valid path's info. With lookup, a path the node
	// lacks is looked up where the node finds paths (its peers) before
	// the answer is an error wrapping pathinfo.ErrNotFound.
	PathInfo(ctx context.Context, path string, lookup bool) (*pathinfo.Info, error)
	// PathFromHashPart returns the path with this hash part, or
	// pathinfo.ErrNotFound.
	PathFromHashPart(ctx context.Context, hash string) (string, error)
	// AllPaths returns every valid path.
	AllPaths(ctx context.Context) ([]string, error)
	// WriteNAR writes a valid path's NAR.
	WriteNAR(ctx context.Context, info *pathinfo.Info, w io.Writer) error
	// AddPath stores a path from its NAR, checked against info's NarHash
	// and NarSize; info.Root is filled in by the store. The NAR must be
	// read exactly to its end, not beyond.
	AddPath(ctx context.Context, info *pathinfo.Info, nar io.Reader) error
	// AddSignatures adds signatures to a valid path.
	AddSignatures(ctx context.Context, path string, sigs []string) error
}

// Connection timeouts. A Nix client keeps its connection for as long as
// its process lives and may leave it idle between operations for long (a
// nix-daemon worker that substitutes from the node, between builds), so
// the bound between requests is hours; a client that wants its connections
// recycled sooner sets the store URL's max-connection-age below it. Inside
// a request (and the handshake), a client that sends nothing, or reads
// nothing of a reply, for longer than Nix itself waits on a stalled
// download (300 s) is given up.
const (
	DefaultIdleTimeout    = 4 * time.Hour
	DefaultRequestTimeout = 10 * time.Minute
)

// Server serves the worker protocol on connections.
type Server struct {
	store    Store
	storeDir string
	log      *slog.Logger

	// IdleTimeout bounds the wait for a client's next request;
	// RequestTimeout the wait for any progress inside one, reading or
	// writing. They apply on connections that have deadlines (sockets,
	// pollable pipes); zero means none. Set them before serving.
	IdleTimeout    time.Duration
	RequestTimeout time.Duration

	mu     sync.Mutex
	conns  map[io.Closer]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer returns a server for store, whose paths live under storeDir.
func NewServer(store Store, storeDir string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{store: store, storeDir: storeDir, log: log, conns: map[io.Closer]struct{}{},
		IdleTimeout: DefaultIdleTimeout, RequestTimeout: DefaultRequestTimeout}
}

// ServeConn runs the protocol on one connection (or on stdin/stdout) until
// the client hangs up. Reads and writes are under the server's timeouts
// where r and w have deadlines.
func (s *Server) ServeConn(ctx context.Context, r io.Reader, w io.Writer) {
	rd := &deadlineReader{r: r}
	if d, ok := r.(readDeadliner); ok && d.SetReadDeadline(time.Time{}) == nil {
		rd.set = d.SetReadDeadline
	}
	wd := &deadlineWriter{w: w}
	if d, ok := w.(writeDeadliner); ok && d.SetWriteDeadline(time.Time{}) == nil {
		wd.set = d.SetWriteDeadline
	}
	c := &conn{srv: s, r: newWireReader(rd), w: newWireWriter(wd), raw: wd, rd: rd, wd: wd}
	if closer, ok := w.(io.Closer); ok {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			closer.Close()
			return
		}
		s.conns[closer] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		defer func() {
			closer.Close()
			s.mu.Lock()
			delete(s.conns, closer)
			s.mu.Unlock()
			s.wg.Done()
		}()
	}
	c.busy()
	c.r.resetBudget()
	if err := c.handshake(); err != nil {
		if !errors.Is(err, io.EOF) {
			s.log.Debug("daemon handshake", "err", err)
		}
		return
	}
	for {
		c.idle()
		op, err := c.r.Uint64()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.log.Debug("daemon connection idle too long: closed", "idle", s.IdleTimeout)
			}
			return // the client hung up, or stayed idle too long
		}
		c.busy()
		c.r.resetBudget()
		if err := c.dispatch(ctx, op); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("daemon connection closed", "op", op, "err", err)
			}
			return
		}
	}
}

type readDeadliner interface{ SetReadDeadline(time.Time) error }
type writeDeadliner interface{ SetWriteDeadline(time.Time) error }

// deadlineReader moves the read deadline ahead before each read, so that
// timeout bounds the wait for progress, not a whole transfer. stalled
// tells that a read ran out of time.
type deadlineReader struct {
	r       io.Reader
	set     func(time.Time) error
	timeout time.Duration
	stalled bool
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.set != nil && d.timeout > 0 {
		d.set(time.Now().Add(d.timeout))
	}
	n, err := d.r.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		d.stalled = true
	}
	return n, err
}

// deadlineWriter does the same for writes; it keeps the destination's
// ReadFrom (sendfile for NARs).
type deadlineWriter struct {
	w       io.Writer
	set     func(time.Time) error
	timeout time.Duration
}

func (d *deadlineWriter) extend() {
	if d.set != nil && d.timeout > 0 {
		d.set(time.Now().Add(d.timeout))
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.w.Write(p)
}

func (d *deadlineWriter) ReadFrom(r io.Reader) (int64, error) {
	d.extend()
	if rf, ok := d.w.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{d}, r)
}

// Close closes every connection and waits for their handlers to return.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// conn is one client connection.
type conn struct {
	srv     *Server
	r       *wireReader
	w       *wireWriter
	raw     io.Writer
	rd      *deadlineReader
	wd      *deadlineWriter
	version uint64 // negotiated
}

func (c *conn) minor() uint64 { return minor(c.version) }

// idle waits for the next request; busy is inside one.
func (c *conn) idle() {
	c.rd.timeout = c.srv.IdleTimeout
	c.wd.timeout = c.srv.RequestTimeout
}

func (c *conn) busy() {
	c.rd.timeout = c.srv.RequestTimeout
	c.wd.timeout = c.srv.RequestTimeout
}

func (c *conn) handshake() error {
	magic, err := c.r.Uint64()
	if err != nil {
		return err
	}
	if magic != workerMagic1 {
		return fmt.Errorf("not a Nix client (magic %#x)", magic)
	}
	// A Nix 2.8 client waits for our magic before it sends its version.
	c.w.Uint64(workerMagic2)
	c.w.Uint64(ProtocolVersion)
	if err := c.w.Flush(); err != nil {
		return err
	}
	clientVersion, err := c.r.Uint64()
	if err != nil {
		return err
	}
	if clientVersion>>8 != 1 {
		return fmt.Errorf("client protocol %d.%d is not 1.x", clientVersion>>8, minor(clientVersion))
	}
	if clientVersion < MinClientVersion {
		// Finish the old client's handshake so that it reads our error
		// (in the old format) where it reads the handshake's log
		// messages, rather than an unexplained hang-up.
		c.version = clientVersion
		if c.minor() >= 14 {
			if affinity, err := c.r.Uint64(); err != nil || affinity != 0 {
				if err == nil {
					_, err = c.r.Uint64()
				}
				if err != nil {
					return err
				}
			}
		}
		if c.minor() >= 11 {
			if _, err := c.r.Uint64(); err != nil {
				return err
			}
		}
		msg := fmt.Sprintf("this Nix speaks daemon protocol 1.%d; p2pstore needs 1.%d (Nix 2.1) or later", c.minor(), minor(MinClientVersion))
		c.fail(msg)
		return errors.New(msg)
	}
	c.version = min(clientVersion, ProtocolVersion)
	if c.minor() >= 38 {
		if _, err := c.r.Strings(); err != nil { // client features
			return err
		}
		c.w.Strings(nil) // we advertise none
		if err := c.w.Flush(); err != nil {
			return err
		}
	}
	if c.minor() >= 14 {
		if affinity, err := c.r.Uint64(); err != nil {
			return err
		} else if affinity != 0 {
			if _, err := c.r.Uint64(); err != nil {
				return err
			}
		}
	}
	if c.minor() >= 11 {
		if _, err := c.r.Uint64(); err != nil { // reserveSpace
			return err
		}
	}
	if c.minor() >= 33 {
		c.w.String(NixVersion)
	}
	if c.minor() >= 35 {
		c.w.Uint64(1) // trusted: the socket is the node owner's
	}
	c.w.Uint64(stderrLast)
	return c.w.Flush()
}

// reply ends an op successfully; the caller writes the payload after it.
func (c *conn) last() { c.w.Uint64(stderrLast) }

// fail sends STDERR_ERROR with msg. The op's input must be consumed
// already: the client goes on using the connection.
func (c *conn) fail(msg string) error {
	c.w.Uint64(stderrError)
	if c.minor() >= 26 {
		c.w.String("Error")
		c.w.Uint64(0) // level: error
		c.w.String("Error")
		c.w.String(msg)
		c.w.Uint64(0) // no position
		c.w.Uint64(0) // no traces
	} else {
		c.w.String(msg)
		c.w.Uint64(1) // exit status
	}
	return c.w.Flush()
}

// opError is an error to report to the client while keeping the
// connection: the op's input has been read.
type opError struct{ msg string }

func (e *opError) Error() string { return e.msg }

func clientErr(format string, args ...any) error {
	return &opError{msg: fmt.Sprintf(format, args...)}
}

// dispatch runs one op. An error return closes the connection; an opError
// is sent to the client and the connection goes on.
func (c *conn) dispatch(ctx context.Context, op uint64) error {
	err := c.op(ctx, op)
	var oe *opError
	switch {
	case err == nil:
		return c.w.Flush()
	case errors.As(err, &oe):
		return c.fail(oe.msg)
	case errors.Is(err, errUnknownOp):
		// We cannot know how many argument bytes to skip: report, close.
		c.fail(err.Error())
		return err
	case errors.Is(err, ErrTooLarge), errors.Is(err, errBadArgs):
		// The rest of the request was not read: the stream cannot be
		// followed any more.
		c.fail(err.Error())
		return err
	case errors.Is(err, os.ErrDeadlineExceeded):
		if c.rd.stalled {
			// Tell a client that stopped sending mid-request why it
			// is dropped, if it still reads; not for long.
			c.wd.timeout = min(c.wd.timeout, 5*time.Second)
			c.fail(fmt.Sprintf("no progress on the request for %v: closing the connection", c.srv.RequestTimeout))
		}
		return err
	case isIOError(err):
		return err
	default:
		c.srv.log.Error("daemon op failed", "op", op, "err", err)
		return c.fail(err.Error())
	}
}

var (
	errUnknownOp = errors.New("invalid operation")
	errBadArgs   = errors.New("bad arguments")
)

func isIOError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// path reads a store path argument and checks it is one.
func (c *conn) path() (string, error) {
	p, err := c.r.String()
	if err != nil {
		return "", err
	}
	// A longer string is not quoted back in the error.
	if max := len(c.srv.storeDir) + 1 + storepath.HashLen + 1 + storepath.MaxNameLen; len(p) > max {
		return "", fmt.Errorf("%w: a store path of %d bytes (at most %d)", errBadArgs, len(p), max)
	}
	if _, err := storepath.Parse(c.srv.storeDir, p); err != nil {
		return "", fmt.Errorf("%w: %v", errBadArgs, err)
	}
	return p, nil
}

// paths reads a list of store paths, each checked as it comes: a list of
// anything else is refused at its first entry.
func (c *conn) paths() ([]string, error) {
	n, err := c.r.count()
	if err != nil {
		return nil, err
	}
	ps := make([]string, 0, min(n, 1024))
	for i := 0; i < n; i++ {
		p, err := c.path()
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

func (c *conn) op(ctx context.Context, op uint64) error {
	st := c.srv.store
	switch op {
	case opSetOptions:
		return c.setOptions()

	case opIsValidPath:
		p, err := c.path()
		if err != nil {
			return err
		}
		_, err = st.PathInfo(ctx, p, true)
		if err != nil && !errors.Is(err, pathinfo.ErrNotFound) {
			return err
		}
		c.last()
		c.w.Bool(err == nil)
		return nil

	case opQueryValidPaths:
		ps, err := c.paths()
		if err != nil {
			return err
		}
		substitute := false
		if c.minor() >= 27 {
			if substitute, err = c.r.Bool(); err != nil {
				return err
			}
		}
		valid, err := c.validPaths(ctx, ps, substitute)
		if err != nil {
			return err
		}
		c.last()
		c.w.Strings(valid)
		return nil

	case opQueryPathInfo:
		p, err := c.path()
		if err != nil {
			return err
		}
		info, err := st.PathInfo(ctx, p, true)
		if err != nil && !errors.Is(err, pathinfo.ErrNotFound) {
			return err
		}
		c.last()
		if info == nil {
			if c.minor() < 17 {
				return clientErr("path '%s' is not valid", p)
			}
			c.w.Uint64(0)
			return nil
		}
		if c.minor() >= 17 {
			c.w.Uint64(1)
		}
		c.writePathInfo(info, false)
		return nil

	case opQueryPathFromHashPart:
		h, err := c.r.String()
		if err != nil {
			return err
		}
		p := ""
		if storepath.ValidateHash(h) == nil {
			p, err = st.PathFromHashPart(ctx, h)
			if errors.Is(err, pathinfo.ErrNotFound) {
				p, err = "", nil
			}
			if err != nil {
				return err
			}
		}
		c.last()
		c.w.String(p)
		return nil

	case opQueryAllValidPaths:
		ps, err := st.AllPaths(ctx)
		if err != nil {
			return err
		}
		c.last()
		c.w.Strings(ps)
		return nil

	case opQueryDeriver:
		p, err := c.path()
		if err != nil {
			return err
		}
		info, err := st.PathInfo(ctx, p, false)
		if err != nil {
			return err
		}
		c.last()
		c.w.String(info.Deriver)
		return nil

	case opQueryReferrers:
		p, err := c.path()
		if err != nil {
			return err
		}
		refs, err := c.referrers(ctx, p)
		if err != nil {
			return err
		}
		c.last()
		c.w.Strings(refs)
		return nil

	case opNarFromPath:
		p, err := c.path()
		if err != nil {
			return err
		}
		// Check before STDERR_LAST: after it, a failure cannot be told.
		info, err := st.PathInfo(ctx, p, true)
		if errors.Is(err, pathinfo.ErrNotFound) {
			return clientErr("path '%s' is not valid", p)
		}
		if err != nil {
			return err
		}
		c.last()
		if err := c.w.Flush(); err != nil {
			return err
		}
		if err := st.WriteNAR(ctx, info, c.raw); err != nil {
			return fmt.Errorf("sending the NAR of %s: %w", p, err)
		}
		return nil

	case opAddToStoreNar:
		return c.addToStoreNar(ctx)

	case opAddMultipleToStore:
		return c.addMultipleToStore(ctx)

	case opAddSignatures:
		p, err := c.path()
		if err != nil {
			return err
		}
		sigs, err := c.r.Strings()
		if err != nil {
			return err
		}
		if err := st.AddSignatures(ctx, p, sigs); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(1)
		return nil

	case opBuildPaths:
		reqs, err := c.r.Strings()
		if err != nil {
			return err
		}
		if c.minor() >= 15 {
			if _, err := c.r.Uint64(); err != nil { // build mode
				return err
			}
		}
		for _, req := range reqs {
			if msg := c.unbuildable(ctx, req); msg != "" {
				return clientErr("%s", msg)
			}
		}
		c.last()
		c.w.Uint64(1)
		return nil

	case opBuildPathsWithResults:
		reqs, err := c.r.Strings()
		if err != nil {
			return err
		}
		if _, err := c.r.Uint64(); err != nil { // build mode
			return err
		}
		c.last()
		c.w.Uint64(uint64(len(reqs)))
		for _, req := range reqs {
			c.w.String(req) // echoed exactly: the client matches on it
			if msg := c.unbuildable(ctx, req); msg != "" {
				status := uint64(buildNoSubstituter)
				if strings.Contains(req, "!") {
					status = buildMiscFailure
				}
				c.writeBuildResult(status, msg)
			} else {
				c.writeBuildResult(buildAlreadyValid, "")
			}
		}
		return nil

	case opEnsurePath:
		p, err := c.path()
		if err != nil {
			return err
		}
		if _, err := st.PathInfo(ctx, p, true); err != nil {
			if errors.Is(err, pathinfo.ErrNotFound) {
				return clientErr("path '%s' does not exist and cannot be created", p)
			}
			return err
		}
		c.last()
		c.w.Uint64(1)
		return nil

	case opQueryMissing:
		reqs, err := c.r.Strings()
		if err != nil {
			return err
		}
		// The reply's sets hold store paths, not DerivedPaths: a
		// derivation we cannot build is reported by its .drv path.
		var unknown []string
		for _, req := range reqs {
			if c.unbuildable(ctx, req) != "" {
				p, _, _ := strings.Cut(req, "!")
				unknown = append(unknown, p)
			}
		}
		c.last()
		c.w.Strings(nil) // willBuild
		c.w.Strings(nil) // willSubstitute
		c.w.Strings(unknown)
		c.w.Uint64(0) // downloadSize
		c.w.Uint64(0) // narSize
		return nil

	case opAddTempRoot, opAddIndirectRoot:
		if _, err := c.r.String(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(1)
		return nil

	case opAddPermRoot:
		if _, err := c.path(); err != nil {
			return err
		}
		root, err := c.r.String()
		if err != nil {
			return err
		}
		c.last()
		c.w.String(root)
		return nil

	case opSyncWithGC, opOptimiseStore:
		c.last()
		c.w.Uint64(1)
		return nil

	case opFindRoots:
		c.last()
		c.w.Uint64(0)
		return nil

	case opVerifyStore:
		if _, err := c.r.Uint64(); err != nil { // checkContents
			return err
		}
		if _, err := c.r.Uint64(); err != nil { // repair
			return err
		}
		c.last()
		c.w.Uint64(0) // `p2pstore verify` does the real check
		return nil

	case opHasSubstitutes:
		if _, err := c.path(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(0)
		return nil

	case opQuerySubstitutablePaths:
		if _, err := c.paths(); err != nil {
			return err
		}
		c.last()
		c.w.Strings(nil)
		return nil

	case opQuerySubstitutablePathInfo:
		if _, err := c.path(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(0)
		return nil

	case opQuerySubstitutablePathInfos:
		if c.minor() >= 22 {
			if _, err := c.r.StringMap(); err != nil {
				return err
			}
		} else if _, err := c.paths(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(0)
		return nil

	case opQueryDerivationOutputs, opQueryValidDerivers:
		if _, err := c.path(); err != nil {
			return err
		}
		c.last()
		c.w.Strings(nil)
		return nil

	case opQueryDerivationOutputNames:
		if _, err := c.path(); err != nil {
			return err
		}
		c.last()
		c.w.Strings(nil)
		return nil

	case opQueryDerivationOutputMap:
		if _, err := c.path(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(0)
		return nil

	case opQueryRealisation:
		if _, err := c.r.String(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(0)
		return nil

	case opAddBuildLog:
		if _, err := c.r.String(); err != nil {
			return err
		}
		if err := (&framedReader{r: c.r, maxSize: MaxFrameLen}).drain(); err != nil {
			return err
		}
		c.last()
		c.w.Uint64(1)
		return nil

	case opBuildDerivation:
		if err := c.skipBuildDerivation(); err != nil {
			return err
		}
		return clientErr("p2pstore does not build derivations; it only stores and serves paths")

	case opCollectGarbage:
		if _, err := c.r.Uint64(); err != nil { // action
			return err
		}
		if _, err := c.r.Strings(); err != nil {
			return err
		}
		for i := 0; i < 5; i++ { // ignoreLiveness, maxFreed, 3 obsolete
			if _, err := c.r.Uint64(); err != nil {
				return err
			}
		}
		return clientErr("garbage collection through the daemon protocol is not supported; run `p2pstore gc`")

	case opRegisterDrvOutput:
		if _, err := c.r.String(); err != nil {
			return err
		}
		if c.minor() < 31 {
			if _, err := c.r.String(); err != nil {
				return err
			}
		}
		return clientErr("p2pstore does not record derivation outputs")

	case opAddToStore:
		return c.addToStore()

	case opAddTextToStore:
		if _, err := c.r.String(); err != nil { // name
			return err
		}
		if err := c.r.Skip(MaxFrameLen); err != nil { // contents
			return err
		}
		if _, err := c.r.Strings(); err != nil { // references
			return err
		}
		return clientErr("p2pstore does not add text files to the store; copy store paths into it with `nix copy --to`")
	}
	return fmt.Errorf("%w %d", errUnknownOp, op)
}

func (c *conn) setOptions() error {
	for i := 0; i < 12; i++ { // flags and settings a store without builders does not use
		if _, err := c.r.Uint64(); err != nil {
			return err
		}
	}
	if c.minor() >= 12 {
		if _, err := c.r.StringMap(); err != nil {
			return err
		}
	}
	c.last()
	return nil
}

func (c *conn) validPaths(ctx context.Context, ps []string, lookup bool) ([]string, error) {
	var valid []string
	for _, p := range ps {
		_, err := c.srv.store.PathInfo(ctx, p, lookup)
		if err == nil {
			valid = append(valid, p)
		} else if !errors.Is(err, pathinfo.ErrNotFound) {
			return nil, err
		}
	}
	return valid, nil
}

func (c *conn) referrers(ctx context.Context, p string) ([]string, error) {
	all, err := c.srv.store.AllPaths(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, q := range all {
		info, err := c.srv.store.PathInfo(ctx, q, false)
		if err != nil {
			continue
		}
		for _, r := range info.References {
			if r == p {
				out = append(out, q)
				break
			}
		}
	}
	return out, nil
}

// unbuildable says why a DerivedPath cannot be "built" (made valid), or ""
// when it is a valid opaque path: that is all a store without builders can
// do, and Nix 2.8's `nix copy` asks for exactly that.
func (c *conn) unbuildable(ctx context.Context, req string) string {
	if strings.Contains(req, "!") {
		return fmt.Sprintf("cannot build '%s': p2pstore does not build derivations", req)
	}
	if _, err := storepath.Parse(c.srv.storeDir, req); err != nil {
		return fmt.Sprintf("'%s' is not a store path", req)
	}
	if _, err := c.srv.store.PathInfo(ctx, req, true); err != nil {
		return fmt.Sprintf("path '%s' is required, but there is no substituter that can build it", req)
	}
	return ""
}

func (c *conn) writeBuildResult(status uint64, msg string) {
	c.w.Uint64(status)
	c.w.String(msg)
	if c.minor() >= 29 {
		c.w.Uint64(0) // timesBuilt
		c.w.Bool(false)
		c.w.Uint64(0) // startTime
		c.w.Uint64(0) // stopTime
	}
	if c.minor() >= 37 {
		c.w.Uint64(0) // cpuUser: none
		c.w.Uint64(0) // cpuSystem: none
	}
	if c.minor() >= 28 {
		c.w.Uint64(0) // builtOutputs: empty map
	}
}

// writePathInfo writes a ValidPathInfo for this connection's version.
func (c *conn) writePathInfo(info *pathinfo.Info, withPath bool) {
	writePathInfo(c.w, info, withPath, c.minor() >= 16)
}

// addToStoreNar: the path's info, repair and dontCheckSigs, then the NAR,
// framed (1.23 and later) or pulled with STDERR_READ (1.21, 1.22).
func (c *conn) addToStoreNar(ctx context.Context) error {
	p, err := c.path()
	if err != nil {
		return err
	}
	info, infoErr := readPathInfo(c.r, false, true)
	if info == nil {
		return infoErr
	}
	info.StorePath = p
	if _, err := c.r.Uint64(); err != nil { // repair
		return err
	}
	if _, err := c.r.Uint64(); err != nil { // dontCheckSigs
		return err
	}
	if c.minor() >= 23 {
		fr := &framedReader{r: c.r, maxSize: MaxFrameLen}
		err := infoErr
		if err == nil {
			err = c.srv.store.AddPath(ctx, info, bufio.NewReaderSize(fr, 64<<10))
		}
		// Drain to the terminator so the connection stays in step, even
		// when the NAR was refused half-way.
		if derr := fr.drain(); derr != nil {
			return derr
		}
		if err != nil {
			return refusal(err)
		}
		c.last()
		return nil
	}
	if infoErr != nil {
		return infoErr // the client only sends what we pull: nothing to drain
	}
	pr := &pullReader{c: c, left: info.NarSize}
	if err := c.srv.store.AddPath(ctx, info, bufio.NewReaderSize(pr, 64<<10)); err != nil {
		if pr.err != nil {
			return pr.err
		}
		return refusal(err)
	}
	c.last()
	return nil
}

// refusal turns a store's failure to add a path into an error for the
// client; the connection goes on, since the op's input was consumed.
func refusal(err error) error {
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	return &opError{msg: err.Error()}
}

// pullReader asks the client for NAR bytes with STDERR_READ, never for
// more than the NarSize it announced (a client fails if asked for more).
type pullReader struct {
	c    *conn
	left uint64
	err  error
}

func (p *pullReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	want := min(uint64(len(b)), p.left, 1<<20)
	p.c.w.Uint64(stderrRead)
	p.c.w.Uint64(want)
	if err := p.c.w.Flush(); err != nil {
		p.err = err
		return 0, err
	}
	n, err := p.c.r.BytesInto(b[:want])
	if err != nil {
		p.err = err
		return 0, err
	}
	if n == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	p.left -= uint64(n)
	return n, nil
}

// addMultipleToStore: repair, dontCheckSigs, then a framed stream holding
// a count and, for each path, its info (format 16, with the path) and its
// NAR, unframed inside the frames. Items come dependencies first.
func (c *conn) addMultipleToStore(ctx context.Context) error {
	if _, err := c.r.Uint64(); err != nil { // repair
		return err
	}
	if _, err := c.r.Uint64(); err != nil { // dontCheckSigs
		return err
	}
	fr := &framedReader{r: c.r, maxSize: MaxFrameLen}
	inner := newWireReader(bufio.NewReaderSize(fr, 64<<10))
	err := func() error {
		count, err := inner.Uint64()
		if err != nil {
			return err
		}
		if count > MaxListLen {
			return fmt.Errorf("%w: AddMultipleToStore of %d paths (at most %d)", ErrTooLarge, count, MaxListLen)
		}
		for i := uint64(0); i < count; i++ {
			inner.resetBudget() // each path's info is dropped once it is added
			info, err := readPathInfo(inner, true, true)
			if err != nil {
				return err
			}
			if _, err := storepath.Parse(c.srv.storeDir, info.StorePath); err != nil {
				return clientErr("%v", err)
			}
			if err := c.srv.store.AddPath(ctx, info, inner.r); err != nil {
				return err
			}
		}
		return nil
	}()
	if errors.Is(err, ErrTooLarge) {
		// No client sends such a length: drop the rest with the
		// connection rather than read on through it.
		return err
	}
	if derr := fr.drain(); derr != nil {
		return derr
	}
	if err != nil {
		return refusal(err) // the stream was drained: the connection is fine
	}
	c.last()
	return nil
}

// addToStore reads the op's arguments, then refuses: adding a file tree by
// content address needs the path computed here, which we leave to
// `nix copy --to` (it adds the path it computed with AddToStoreNar).
func (c *conn) addToStore() error {
	if c.minor() >= 25 {
		if _, err := c.r.String(); err != nil { // name
			return err
		}
		if _, err := c.r.String(); err != nil { // method
			return err
		}
		if _, err := c.r.Strings(); err != nil { // references
			return err
		}
		if _, err := c.r.Uint64(); err != nil { // repair
			return err
		}
		if err := (&framedReader{r: c.r, maxSize: MaxFrameLen}).drain(); err != nil {
			return err
		}
	} else {
		for i := 0; i < 4; i++ { // name, fixed, recursive, hash algo
			var err error
			if i == 0 || i == 3 {
				_, err = c.r.String()
			} else {
				_, err = c.r.Uint64()
			}
			if err != nil {
				return err
			}
		}
		// The data follows as a NAR: parse it to find its end.
		nr := nar.NewReader(c.r.r)
		for {
			_, err := nr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("%w: %v", errBadArgs, err)
			}
		}
	}
	return clientErr("p2pstore does not add files by content address; use `nix copy --to` with a store path")
}

// skipBuildDerivation reads BuildDerivation's arguments.
func (c *conn) skipBuildDerivation() error {
	if _, err := c.r.String(); err != nil { // drv path
		return err
	}
	n, err := c.r.count()
	if err != nil {
		return err
	}
	for i := 0; i < n*4; i++ { // outputs: name, path, hash algo, hash
		if _, err := c.r.String(); err != nil {
			return err
		}
	}
	if _, err := c.r.Strings(); err != nil { // input sources
		return err
	}
	for i := 0; i < 2; i++ { // platform, builder
		if _, err := c.r.String(); err != nil {
			return err
		}
	}
	if _, err := c.r.Strings(); err != nil { // args
		return err
	}
	if _, err := c.r.StringMap(); err != nil { // env
		return err
	}
	_, err = c.r.Uint64() // build mode
	return err
}
