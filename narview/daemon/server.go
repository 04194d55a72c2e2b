package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

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

// Server serves the worker protocol on connections.
type Server struct {
	store    Store
	storeDir string
	log      *slog.Logger
	guix     *GuixOptions // nil: Nix's dialect

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
	rd, wd := withDeadlines(r, w)
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
	version uint64 // negotiated; a Guix connection's is Nix's 1.15
	// guixMinor is a Guix connection's negotiated minor; 0 for Nix.
	guixMinor uint64
}

// minor is the Nix minor that says what goes on the wire.
func (c *conn) minor() uint64 { return minor(c.version) }

// handshake answers the client's magic with ours and the server's
// version, reads the client's version and goes on in the client's
// dialect: a client of the other one is turned away once it has sent
// all it sends before it reads, so that it gets the reason.
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
	if c.srv.guix != nil {
		c.w.Uint64(GuixProtocolVersion)
	} else {
		c.w.Uint64(ProtocolVersion)
	}
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
	if minor(clientVersion) >= minGuixMinor {
		return c.guixHandshake(clientVersion)
	}
	return c.nixHandshake(clientVersion)
}

func (c *conn) nixHandshake(clientVersion uint64) error {
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
	if c.srv.guix != nil {
		msg := "this is p2pstore's Guix daemon socket (guix.daemon_socket); Nix clients use daemon.socket"
		c.fail(msg)
		return errors.New(msg)
	}
	c.w.Uint64(stderrLast)
	return c.w.Flush()
}

// last ends an op successfully; the caller writes the reply after it.
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

// opHandlers are the ops answered by a handler of their own, most of
// them from the store: queries (ops_query.go), requests to make paths
// valid (ops_build.go), adding paths (ops_add.go). The others are in the
// table of fixed answers (ops_fixed.go).
var opHandlers = map[uint64]func(*conn, context.Context) error{
	opIsValidPath:           (*conn).isValidPath,
	opQueryValidPaths:       (*conn).queryValidPaths,
	opQueryPathInfo:         (*conn).queryPathInfo,
	opQueryPathFromHashPart: (*conn).queryPathFromHashPart,
	opQueryAllValidPaths:    (*conn).queryAllValidPaths,
	opQueryDeriver:          (*conn).queryDeriver,
	opQueryReferrers:        (*conn).queryReferrers,
	opNarFromPath:           (*conn).narFromPath,

	opEnsurePath:            (*conn).ensurePath,
	opBuildPaths:            (*conn).buildPaths,
	opBuildPathsWithResults: (*conn).buildPathsWithResults,
	opQueryMissing:          (*conn).queryMissing,

	opAddToStoreNar:      (*conn).addToStoreNar,
	opAddMultipleToStore: (*conn).addMultipleToStore,
	opAddSignatures:      (*conn).addSignatures,

	opAddPermRoot: (*conn).addPermRoot,
}

func (c *conn) op(ctx context.Context, op uint64) error {
	handlers, fixed := opHandlers, fixedOps
	if c.srv.guix != nil {
		handlers, fixed = guixOpHandlers, guixFixedOps
	}
	if handle, ok := handlers[op]; ok {
		return handle(c, ctx)
	}
	if f, ok := fixed[op]; ok {
		return c.answerFixed(f)
	}
	return fmt.Errorf("%w %d", errUnknownOp, op)
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
		if c.srv.guix != nil {
			// guix-daemon checks paths once the request is read,
			// so that the connection goes on.
			return "", clientErr("%v", err)
		}
		return "", fmt.Errorf("%w: %v", errBadArgs, err)
	}
	return p, nil
}

// paths reads a list of store paths, each checked as it comes: a list of
// anything else is refused at its first entry (for Guix, once the list
// is read).
func (c *conn) paths() ([]string, error) {
	n, err := c.r.count()
	if err != nil {
		return nil, err
	}
	ps := make([]string, 0, min(n, 1024))
	var bad error
	for i := 0; i < n; i++ {
		p, err := c.path()
		var oe *opError
		if errors.As(err, &oe) {
			bad = cmp.Or(bad, err)
			continue
		}
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, bad
}
