package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Client is a connection to a Nix daemon (or to a node). Its methods run
// one op at a time; it is safe for concurrent use, ops are serialised.
type Client struct {
	mu      sync.Mutex
	conn    io.ReadWriteCloser
	r       *wireReader
	w       *wireWriter
	version uint64 // negotiated; a Guix daemon's is Nix's 1.15
	guix    bool   // the daemon is guix-daemon (DialGuix)
	// sink gets the data the daemon sends with STDERR_WRITE during an op
	// (an export); nil drops it.
	sink io.Writer
}

// Dial connects to the daemon socket at path and shakes hands.
func Dial(path string) (*Client, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return NewClient(c, ProtocolVersion)
}

// NewClient shakes hands over conn, offering version, and sends the
// options a client always sends first.
func NewClient(conn io.ReadWriteCloser, version uint64) (*Client, error) {
	c := &Client{conn: conn, r: newWireReader(conn), w: newWireWriter(conn)}
	if err := c.handshake(version); err != nil {
		conn.Close()
		return nil, fmt.Errorf("daemon handshake: %w", err)
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) minor() uint64 { return minor(c.version) }

func (c *Client) handshake(version uint64) error {
	c.w.Uint64(workerMagic1)
	if err := c.w.Flush(); err != nil {
		return err
	}
	magic, err := c.r.Uint64()
	if err != nil {
		return err
	}
	if magic != workerMagic2 {
		return fmt.Errorf("not a Nix daemon (magic %#x)", magic)
	}
	server, err := c.r.Uint64()
	if err != nil {
		return err
	}
	if server>>8 != 1 || minor(server) < 21 {
		return fmt.Errorf("daemon protocol %d.%d is too old", server>>8, minor(server))
	}
	c.version = min(server, version)
	c.w.Uint64(version)
	if c.minor() >= 38 {
		c.w.Strings(nil)
		if err := c.w.Flush(); err != nil {
			return err
		}
		if _, err := c.r.Strings(); err != nil {
			return err
		}
	}
	if c.minor() >= 14 {
		c.w.Uint64(0) // no CPU affinity
	}
	if c.minor() >= 11 {
		c.w.Uint64(0) // reserveSpace
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.minor() >= 33 {
		if _, err := c.r.String(); err != nil { // the daemon's Nix version
			return err
		}
	}
	if c.minor() >= 35 {
		if _, err := c.r.Uint64(); err != nil { // trusted
			return err
		}
	}
	if err := c.stderr(nil); err != nil {
		return err
	}
	return c.setOptions()
}

func (c *Client) setOptions() error {
	c.w.Uint64(opSetOptions)
	for i, v := range []uint64{0, 0, 0, 0, 1, 0, 1, 7, 0, 0, 0, 0} {
		_ = i // keepFailed keepGoing tryFallback verbosity maxBuildJobs maxSilentTime useBuildHook verboseBuild logType printBuildTrace buildCores useSubstitutes
		c.w.Uint64(v)
	}
	if c.minor() >= 12 {
		c.w.Uint64(0) // no overrides
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.stderr(nil)
}

// DaemonError is an error the daemon reported for an op.
type DaemonError struct{ Msg string }

func (e *DaemonError) Error() string { return e.Msg }

// stderr reads log messages until STDERR_LAST (nil) or STDERR_ERROR (a
// *DaemonError). read answers STDERR_READ requests, if the op has data.
func (c *Client) stderr(read func(max uint64) ([]byte, error)) error {
	for {
		tag, err := c.r.Uint64()
		if err != nil {
			return err
		}
		switch tag {
		case stderrLast:
			return nil
		case stderrError:
			return c.readError()
		case stderrNext:
			if _, err := c.r.String(); err != nil {
				return err
			}
		case stderrStartActivity:
			if err := c.skipActivity(); err != nil {
				return err
			}
		case stderrStopActivity:
			if _, err := c.r.Uint64(); err != nil {
				return err
			}
		case stderrResult:
			if _, err := c.r.Uint64(); err != nil { // id
				return err
			}
			if _, err := c.r.Uint64(); err != nil { // type
				return err
			}
			if err := c.skipFields(); err != nil {
				return err
			}
		case stderrRead:
			max, err := c.r.Uint64()
			if err != nil {
				return err
			}
			if read == nil {
				return errors.New("daemon asked for data the op does not have")
			}
			data, err := read(max)
			if err != nil {
				return err
			}
			c.w.String(string(data))
			if err := c.w.Flush(); err != nil {
				return err
			}
		case stderrWrite:
			sink := c.sink
			if sink == nil {
				sink = io.Discard
			}
			if err := c.r.CopyTo(sink, MaxFrameLen); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown stderr message %#x", tag)
		}
	}
}

func (c *Client) readError() error {
	if c.minor() >= 26 {
		if _, err := c.r.String(); err != nil { // "Error"
			return err
		}
		if _, err := c.r.Uint64(); err != nil { // level
			return err
		}
		if _, err := c.r.String(); err != nil { // name
			return err
		}
		msg, err := c.r.String()
		if err != nil {
			return err
		}
		if havePos, err := c.r.Uint64(); err != nil || havePos != 0 {
			return fmt.Errorf("daemon error with a position: %s", msg)
		}
		n, err := c.r.count()
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if _, err := c.r.Uint64(); err != nil { // havePos
				return err
			}
			if _, err := c.r.String(); err != nil {
				return err
			}
		}
		return &DaemonError{Msg: msg}
	}
	msg, err := c.r.String()
	if err != nil {
		return err
	}
	if _, err := c.r.Uint64(); err != nil { // exit status
		return err
	}
	return &DaemonError{Msg: msg}
}

func (c *Client) skipActivity() error {
	for i := 0; i < 3; i++ { // id, level, type
		if _, err := c.r.Uint64(); err != nil {
			return err
		}
	}
	if _, err := c.r.String(); err != nil { // text
		return err
	}
	if err := c.skipFields(); err != nil {
		return err
	}
	_, err := c.r.Uint64() // parent
	return err
}

func (c *Client) skipFields() error {
	n, err := c.r.count()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		typ, err := c.r.Uint64()
		if err != nil {
			return err
		}
		switch typ {
		case 0:
			_, err = c.r.Uint64()
		case 1:
			_, err = c.r.String()
		default:
			err = fmt.Errorf("unknown field type %d", typ)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// call sends an op whose arguments args writes, and waits for its result.
func (c *Client) call(op uint64, args func()) error {
	c.w.Uint64(op)
	if args != nil {
		args()
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.stderr(nil)
}

// QueryValidPaths returns which of paths the daemon holds.
func (c *Client) QueryValidPaths(paths []string, substitute bool) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.call(opQueryValidPaths, func() {
		c.w.Strings(paths)
		if c.minor() >= 27 {
			c.w.Bool(substitute)
		}
	})
	if err != nil {
		return nil, err
	}
	return c.r.Strings()
}

// QueryAllValidPaths returns every valid path of the daemon's store.
func (c *Client) QueryAllValidPaths() ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(opQueryAllValidPaths, func() {}); err != nil {
		return nil, err
	}
	return c.r.Strings()
}

// QueryPathInfo returns a path's info, or pathinfo.ErrNotFound.
func (c *Client) QueryPathInfo(path string) (*pathinfo.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.call(opQueryPathInfo, func() { c.w.String(path) }); err != nil {
		var de *DaemonError
		if errors.As(err, &de) && strings.Contains(de.Msg, "is not valid") {
			return nil, pathinfo.ErrNotFound
		}
		return nil, err
	}
	if c.minor() >= 17 {
		valid, err := c.r.Bool()
		if err != nil {
			return nil, err
		}
		if !valid {
			return nil, pathinfo.ErrNotFound
		}
	}
	info, err := readPathInfo(c.r, false, c.minor() >= 16)
	if err != nil {
		return nil, err
	}
	info.StorePath = path
	return info, nil
}

// NarFromPath writes the path's NAR to w. The NAR has no length prefix on
// the wire, so it is parsed to find its end. guix-daemon has no such op:
// the NAR is taken from an export of the path.
func (c *Client) NarFromPath(path string, w io.Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.guix {
		return c.exportNAR(path, w)
	}
	if err := c.call(opNarFromPath, func() { c.w.String(path) }); err != nil {
		return err
	}
	return readNAR(&teeReader{r: c.r.r, w: w})
}

// teeReader writes what is read through it; it is a ByteReader so that the
// NAR parser reads exactly the NAR from the buffered connection.
type teeReader struct {
	r *bufio.Reader
	w io.Writer
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		if _, werr := t.w.Write(p[:n]); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (t *teeReader) ReadByte() (byte, error) {
	var b [1]byte
	_, err := io.ReadFull(t, b[:])
	return b[0], err
}
