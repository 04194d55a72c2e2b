package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"

	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// Guix's dialect of the protocol (guix-daemon's): Nix's as it stood at
// 1.15 when Guix forked, with Guix's own minors from 0x60 on. A Guix
// server says so with its version (0x164), before it knows the client,
// so Guix clients get a socket of their own (NewGuixServer) rather than
// being told apart on Nix's. On the wire shared with Nix, a Guix
// connection is answered as a Nix 1.15 one (conn.minor): no features,
// version string or trust flag in the handshake, errors as a message and
// a status, a path info without the valid flag or signatures. What Guix
// changed or kept after Nix dropped it is here: QueryPathHash,
// QueryReferences, ExportPath and ImportPaths (archives signed as Guix
// signs them, checked against the node's trusted Guix keys as
// guix-daemon checks its ACL, whoever the client), SetOptions without
// the build limits (0x61), BuiltinBuilders and SubstituteURLs.

const (
	// GuixProtocolVersion is the Guix protocol we speak: 1.0x64, as
	// guix-daemon since 2023 (0x163 clients, from 2018 on, too).
	GuixProtocolVersion = 1<<8 | 0x64
	// minGuixMinor is where Guix's minors begin: below it is a Nix client.
	minGuixMinor = 0x60
	// guixWireMinor is the Nix minor whose wire a Guix connection shares.
	guixWireMinor = 15

	exportMagic = 0x4558494e // "NIXE": the trailer of an exported path
)

// Guix op codes that Nix does not have (any more).
const (
	opQueryPathHash   = 4
	opQueryReferences = 5
	opExportPath      = 16
	opImportPaths     = 27
	opBuiltinBuilders = 80
	opSubstituteURLs  = 81
)

// GuixOptions configures a server of Guix's dialect.
type GuixOptions struct {
	// SignExport signs the SHA-256 of an exported path's archive, for
	// `guix archive --export`, which asks for a signature: the
	// signature's S-expression in libgcrypt's advanced notation. Nil: an
	// export asked to be signed is refused with the reason.
	SignExport func(sha256 [sha256.Size]byte) string
	// CheckImport accepts the signature an imported path's archive
	// carries (its S-expression text) when it signs sha256 with a
	// trusted key, as guix-daemon does with its ACL: Guix imports only
	// signed archives, whoever the client. Nil: every import is refused.
	CheckImport func(signature string, sha256 [sha256.Size]byte) error
	// SpoolDir holds an imported path's NAR while its signature, which
	// comes after it, is checked; "" is the system's temporary directory.
	SpoolDir string
}

// NewGuixServer returns a server of Guix's dialect for store, whose paths
// live under storeDir (/gnu/store).
func NewGuixServer(store Store, storeDir string, opts GuixOptions, log *slog.Logger) *Server {
	s := NewServer(store, storeDir, log)
	s.guix = &opts
	return s
}

// guixHandshake follows a Guix client's version: its CPU affinity and
// reserveSpace, then STDERR_LAST.
func (c *conn) guixHandshake(clientVersion uint64) error {
	c.version = 1<<8 | guixWireMinor
	c.guixMinor = min(minor(clientVersion), minor(GuixProtocolVersion))
	if affinity, err := c.r.Uint64(); err != nil {
		return err
	} else if affinity != 0 {
		if _, err := c.r.Uint64(); err != nil {
			return err
		}
	}
	if _, err := c.r.Uint64(); err != nil { // reserveSpace
		return err
	}
	if c.srv.guix == nil {
		msg := "this is p2pstore's Nix daemon socket (daemon.socket); Guix clients use guix.daemon_socket"
		c.fail(msg)
		return errors.New(msg)
	}
	c.w.Uint64(stderrLast)
	return c.w.Flush()
}

// guixOpHandlers and guixFixedOps are Guix's ops: Nix's where the wire is
// the same at 1.15, Guix's own where not.
var (
	guixOpHandlers = map[uint64]func(*conn, context.Context) error{
		opIsValidPath:           (*conn).isValidPath,
		opQueryPathHash:         (*conn).queryPathHash,
		opQueryReferences:       (*conn).queryReferences,
		opQueryReferrers:        (*conn).queryReferrers,
		opBuildPaths:            (*conn).buildPaths,
		opEnsurePath:            (*conn).ensurePath,
		opExportPath:            (*conn).exportPath,
		opQueryDeriver:          (*conn).queryDeriver,
		opQueryAllValidPaths:    (*conn).queryAllValidPaths,
		opQueryPathInfo:         (*conn).queryPathInfo,
		opQueryPathFromHashPart: (*conn).queryPathFromHashPart,
		opQueryValidPaths:       (*conn).queryValidPaths,
		opImportPaths:           (*conn).importPaths,
	}
	guixFixedOps = func() map[uint64]fixedOp {
		ops := map[uint64]fixedOp{
			opSetOptions: {args: readAll(
				skipUint64s(4),                   // keepFailed, keepGoing, fallback, verbosity
				guixBefore(0x61, skipUint64s(2)), // maxBuildJobs, maxSilentTime
				skipUint64,                       // useBuildHook
				skipUint64s(3),                   // buildVerbosity, logType, printBuildTrace
				guixBefore(0x61, skipUint64),     // buildCores
				skipUint64,                       // useSubstitutes
				skipStringMap,                    // overrides
			), reply: replyNothing},
			// No builders, and no substituters of its own: the node is
			// the substitute.
			opBuiltinBuilders: {reply: replyNone},
			opSubstituteURLs:  {reply: replyNone},
		}
		for _, op := range []uint64{
			opHasSubstitutes, opAddToStore, opAddTextToStore, opAddTempRoot, opAddIndirectRoot,
			opSyncWithGC, opFindRoots, opCollectGarbage, opQuerySubstitutablePathInfo,
			opQueryDerivationOutputs, opQueryDerivationOutputNames, opQuerySubstitutablePathInfos,
			opQuerySubstitutablePaths, opQueryValidDerivers, opOptimiseStore, opVerifyStore,
		} {
			ops[op] = fixedOps[op]
		}
		return ops
	}()
)

// guixBefore reads r's arguments for Guix minors below minor.
func guixBefore(minor uint64, r argsReader) argsReader {
	return func(c *conn) error {
		if c.guixMinor >= minor {
			return nil
		}
		return r(c)
	}
}

// queryPathHash answers the NarHash in base16.
func (c *conn) queryPathHash(ctx context.Context) error {
	info, err := c.validPath(ctx)
	if err != nil {
		return err
	}
	c.last()
	c.w.String(info.NarHash.Hex())
	return nil
}

func (c *conn) queryReferences(ctx context.Context) error {
	info, err := c.validPath(ctx)
	if err != nil {
		return err
	}
	c.last()
	c.w.Strings(info.References)
	return nil
}

// exportPath sends a path as guix-daemon exports it, all of it as data
// for the client's sink (STDERR_WRITE): the NAR, then exportMagic, the
// path, its references and deriver, then 1 and a signature of the SHA-256
// of all that, or 0. `guix archive --import` checks the signature.
func (c *conn) exportPath(ctx context.Context) error {
	p, badPath := c.path()
	var oe *opError
	if badPath != nil && !errors.As(badPath, &oe) {
		return badPath
	}
	sign, err := c.r.Uint64() // read whatever the path was: the connection goes on
	if err != nil {
		return err
	}
	if badPath != nil {
		return badPath
	}
	info, err := c.validInfo(ctx, p, true)
	if err != nil {
		return err
	}
	if info == nil {
		return clientErr("path '%s' is not valid", p)
	}
	if sign != 0 && c.srv.guix.SignExport == nil {
		return clientErr("cannot sign the export of '%s': p2pstore has no Guix key (guix.sign_key_file)", p)
	}
	h := sha256.New()
	data := bufio.NewWriterSize(io.MultiWriter(stderrData{c}, h), 64<<10)
	if err := c.srv.store.WriteNAR(ctx, info, data); err != nil {
		if c.w.err != nil {
			return c.w.err
		}
		return clientErr("exporting '%s': %v", p, err)
	}
	trailer := newWireWriter(data)
	trailer.Uint64(exportMagic)
	trailer.String(info.StorePath)
	trailer.Strings(info.References)
	trailer.String(info.Deriver)
	if err := trailer.Flush(); err != nil {
		return err
	}
	if err := data.Flush(); err != nil {
		return err
	}
	signed := newWireWriter(stderrData{c})
	if sign != 0 {
		signed.Uint64(1)
		signed.String(c.srv.guix.SignExport([sha256.Size]byte(h.Sum(nil))))
	} else {
		signed.Uint64(0)
	}
	if err := signed.Flush(); err != nil {
		return err
	}
	c.last()
	c.w.Uint64(1)
	return nil
}

// importPaths adds the paths of an export stream (what `guix archive
// --export` writes: 1 and a path's export, for each path, then 0), pulled
// from the client with STDERR_READ, never past its end. Each path's NAR
// is spooled, as its signature comes after it, then added once the
// signature is checked. The reply lists the paths added.
func (c *conn) importPaths(ctx context.Context) error {
	src := bufio.NewReaderSize(&pullReader{c: c, left: math.MaxUint64}, 64<<10)
	var added []string
	for {
		more, err := newWireReader(src).Uint64()
		if err != nil {
			return c.importFailed(err)
		}
		if more == 0 {
			break
		}
		if more != 1 {
			return clientErr("the import is not an export of paths (guix archive --export)")
		}
		p, err := c.importPath(ctx, src)
		if err != nil {
			return c.importFailed(err)
		}
		added = append(added, p)
	}
	c.last()
	c.w.Strings(added)
	return nil
}

// importFailed reports an import's failure: the connection's, or the
// client's error (the client sends only what is asked for, so the
// connection stays in step).
func (c *conn) importFailed(err error) error {
	var oe *opError
	if errors.As(err, &oe) {
		return err
	}
	if c.w.err != nil {
		return c.w.err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return clientErr("the import ended in the middle of a path")
	}
	return refusal(err)
}

// importPath reads one path's export, checks its signature and adds it.
func (c *conn) importPath(ctx context.Context, src *bufio.Reader) (string, error) {
	spool, err := os.CreateTemp(c.srv.guix.SpoolDir, "guix-import-*.nar")
	if err != nil {
		return "", err
	}
	os.Remove(spool.Name()) // the descriptor is enough; a crash leaves nothing
	defer spool.Close()
	h, narHash := sha256.New(), sha256.New()
	nar := &counting.Writer{W: io.MultiWriter(spool, h, narHash)}
	if err := readNAR(&teeReader{r: src, w: nar}); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", err
		}
		return "", clientErr("the import's NAR: %v", err)
	}
	trailer := newWireReader(src)
	trailer.resetBudget()
	magic, err := trailer.Uint64()
	if err != nil {
		return "", err
	}
	if magic != exportMagic {
		return "", clientErr("the import's NAR is not followed by an export trailer (%#x)", magic)
	}
	info := &pathinfo.Info{NarSize: uint64(nar.N), NarHash: [sha256.Size]byte(narHash.Sum(nil))}
	if info.StorePath, err = trailer.String(); err != nil {
		return "", err
	}
	if info.References, err = trailer.Strings(); err != nil {
		return "", err
	}
	if info.Deriver, err = trailer.String(); err != nil {
		return "", err
	}
	// What was signed is the NAR and the trailer as sent; the wire's
	// encoding is canonical (zero padding), so it is written again here.
	hw := newWireWriter(h)
	hw.Uint64(magic)
	hw.String(info.StorePath)
	hw.Strings(info.References)
	hw.String(info.Deriver)
	if err := hw.Flush(); err != nil {
		return "", err
	}
	signed := [sha256.Size]byte(h.Sum(nil))
	hasSig, err := trailer.Uint64()
	if err != nil {
		return "", err
	}
	sig := ""
	if hasSig == 1 {
		if sig, err = trailer.String(); err != nil {
			return "", err
		}
	}
	if err := info.Validate(c.srv.storeDir); err != nil {
		return "", clientErr("importing: %v", err)
	}
	switch {
	case hasSig != 1:
		return "", clientErr("importing %s: the archive is not signed; Guix imports only signed archives", info.StorePath)
	case c.srv.guix.CheckImport == nil:
		return "", clientErr("importing %s: p2pstore trusts no Guix key (guix.public_keys)", info.StorePath)
	}
	if err := c.srv.guix.CheckImport(sig, signed); err != nil {
		return "", clientErr("importing %s: %v", info.StorePath, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := c.srv.store.AddPath(ctx, info, bufio.NewReaderSize(spool, 64<<10)); err != nil {
		return "", refusal(err)
	}
	return info.StorePath, nil
}

// stderrData sends what is written to it as one STDERR_WRITE message:
// data for the client's sink.
type stderrData struct{ c *conn }

func (s stderrData) Write(p []byte) (int, error) {
	s.c.w.Uint64(stderrWrite)
	s.c.w.Bytes(p)
	if s.c.w.err != nil {
		return 0, s.c.w.err
	}
	return len(p), nil
}

// GuixClientVersion is the version DialGuix offers: 1.0x163, which
// guix-daemon has understood since 2018.
const GuixClientVersion = 1<<8 | 0x163

// DialGuix connects to a guix-daemon socket (or a node's
// guix.daemon_socket) and shakes hands in Guix's dialect. The Client's
// queries then read Guix's answers; NarFromPath exports the path.
func DialGuix(path string) (*Client, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return NewGuixClient(conn)
}

// NewGuixClient shakes hands in Guix's dialect over conn.
func NewGuixClient(conn io.ReadWriteCloser) (*Client, error) {
	c := &Client{conn: conn, r: newWireReader(conn), w: newWireWriter(conn), guix: true}
	if err := c.guixHandshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("guix-daemon handshake: %w", err)
	}
	return c, nil
}

func (c *Client) guixHandshake() error {
	c.w.Uint64(workerMagic1)
	if err := c.w.Flush(); err != nil {
		return err
	}
	if magic, err := c.r.Uint64(); err != nil {
		return err
	} else if magic != workerMagic2 {
		return fmt.Errorf("not a Guix daemon (magic %#x)", magic)
	}
	server, err := c.r.Uint64()
	if err != nil {
		return err
	}
	if server>>8 != 1 || minor(server) < minGuixMinor {
		return fmt.Errorf("daemon protocol %d.%#x is not Guix's", server>>8, minor(server))
	}
	c.version = 1<<8 | guixWireMinor
	c.w.Uint64(GuixClientVersion)
	c.w.Uint64(0) // no CPU affinity
	c.w.Uint64(0) // reserveSpace
	if err := c.w.Flush(); err != nil {
		return err
	}
	if err := c.stderr(nil); err != nil {
		return err
	}
	// SetOptions as a 0x163 client sends it: no build limits.
	c.w.Uint64(opSetOptions)
	for range 9 { // keepFailed keepGoing fallback verbosity useBuildHook buildVerbosity logType printBuildTrace useSubstitutes
		c.w.Uint64(0)
	}
	c.w.Uint64(0) // no overrides
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.stderr(nil)
}

// Export writes an export of path to w as guix-daemon makes it (what
// `guix archive --export` writes for one path, less its framing): the
// NAR, its trailer and, with sign, the daemon's signature of it.
func (c *Client) Export(path string, sign bool, w io.Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.export(path, sign, w)
}

func (c *Client) export(path string, sign bool, w io.Writer) error {
	c.sink = w
	err := c.call(opExportPath, func() {
		c.w.String(path)
		c.w.Bool(sign)
	})
	c.sink = nil
	if err != nil {
		return err
	}
	_, err = c.r.Uint64() // 1
	return err
}

// Import sends an export stream (what `guix archive --export` writes) to
// the daemon, which adds its paths, and returns them.
func (c *Client) Import(r io.Reader) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.Uint64(opImportPaths)
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	err := c.stderr(func(max uint64) ([]byte, error) {
		b := make([]byte, min(max, 1<<20))
		n, err := io.ReadFull(r, b)
		if n == 0 {
			return nil, fmt.Errorf("the export ended before the daemon read it all: %w", err)
		}
		return b[:n], nil
	})
	if err != nil {
		return nil, err
	}
	return c.r.Strings()
}

// exportNAR writes the NAR of an unsigned export of path to w, and checks
// the export's trailer names the path.
func (c *Client) exportNAR(path string, w io.Writer) error {
	pr, pw := io.Pipe()
	parsed := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(pr, 64<<10)
		err := readNAR(&teeReader{r: br, w: w})
		if err == nil {
			err = checkExportTrailer(newWireReader(br), path)
		}
		io.Copy(io.Discard, br) // whatever went wrong, the export goes on to its end
		parsed <- err
	}()
	err := c.export(path, false, pw)
	pw.CloseWithError(err)
	if perr := <-parsed; err == nil && perr != nil {
		err = fmt.Errorf("export of %s: %w", path, perr)
	}
	return err
}

// checkExportTrailer reads what follows the NAR in an export.
func checkExportTrailer(r *wireReader, path string) error {
	magic, err := r.Uint64()
	if err != nil {
		return err
	}
	if magic != exportMagic {
		return fmt.Errorf("no export trailer after the NAR (%#x)", magic)
	}
	got, err := r.String()
	if err != nil {
		return err
	}
	if got != path {
		return fmt.Errorf("the export is of %s", got)
	}
	return nil
}
