package localstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // the "sqlite" driver, pure Go

	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// Watching a store for the node that shares it. The node's user reads
// Nix's database directly (DB): read-only but not immutable (Nix keeps
// writing it; immutable would let SQLite cache what changes), one short
// statement at a time (a long read stops Nix's WAL checkpoints), after
// checking the schema version. Where the database cannot be read (no
// permission, or a Nix older than 2.22 with no writer open, whose WAL
// files a reader may not create), the nix-daemon serves instead
// (DaemonWatch). Either way, NARs are dumped from the store's files by
// the caller's own process.

// SchemaVersion is the db.sqlite schema this package reads (Nix's
// nix/var/nix/db/schema file); another version is refused, not guessed at.
const SchemaVersion = "10"

// Watcher follows the valid paths of a local store. Poll reports the
// changes since its last call (on the first, every path).
type Watcher interface {
	// Poll calls put for each path that is new or whose info changed (a
	// signature added), and gone for each that is no longer valid.
	Poll(ctx context.Context, put func(*pathinfo.Info) error, gone func(path string)) error
	// Info reads one valid path's info, or pathinfo.ErrNotFound, so that
	// the caller need not keep whole infos in memory. Safe during a Poll.
	Info(ctx context.Context, path string) (*pathinfo.Info, error)
	// Dump writes the NAR of a store path, read from the store's files.
	Dump(ctx context.Context, path string, w io.Writer) error
	Name() string
	Close() error
}

// DB reads a Nix store's database. root is the directory under which
// nix/store and nix/var/nix/db lie: "/" for the system's store, DIR for a
// store made with --store DIR.
type DB struct {
	root, storeDir, file string
	db                   *sql.DB
	conn                 *sql.Conn // one connection for polls, so that data_version is its own
	version              int64     // data_version at the last full listing
	listed               bool
	rows                 map[string]row // path -> what the last listing saw
}

// row is a ValidPaths row as a poll compares it: a path registered again
// gets a new id, a path signed since has other sigs (kept as their hash:
// one row per valid path stays in memory).
type row struct {
	id   int64
	sigs uint64
}

// DBFile returns where the database of the store under root lies.
func DBFile(root string) string { return filepath.Join(root, "nix", "var", "nix", "db", "db.sqlite") }

// OpenDB opens the database of the store under root read-only, after
// checking its schema version, and reads it once to fail now where it
// cannot be read.
func OpenDB(ctx context.Context, root, storeDir string) (*DB, error) {
	file := DBFile(root)
	schemaFile := filepath.Join(filepath.Dir(file), "schema")
	b, err := os.ReadFile(schemaFile)
	if err != nil {
		return nil, err
	}
	if v := strings.TrimSpace(string(b)); v != SchemaVersion {
		return nil, fmt.Errorf("%s: Nix database schema %s; this version reads schema %s", schemaFile, v, SchemaVersion)
	}
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	// Waiting for a lock is rare for a reader under WAL (a recovery, a
	// checkpoint that restarts the log); a poll that times out is retried
	// at the next.
	q := url.Values{"mode": {"ro"}}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "query_only(1)")
	dsn := (&url.URL{Scheme: "file", OmitHost: true, Path: file, RawQuery: q.Encode()}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	// Polls hold one connection; Info, asked by requests during a poll,
	// takes another.
	db.SetMaxOpenConns(3)
	db.SetMaxIdleConns(2)
	d := &DB{root: root, storeDir: storeDir, file: file, db: db, rows: map[string]row{}}
	if d.conn, err = db.Conn(ctx); err == nil {
		var n int64
		err = d.conn.QueryRowContext(ctx, "select count(*) from ValidPaths").Scan(&n)
	}
	if err != nil {
		d.Close()
		if strings.Contains(err.Error(), "readonly database") {
			// SQLite must create the WAL's -shm file, which Nix before 2.22
			// removes when its last connection closes.
			return nil, fmt.Errorf("reading %s: %w (this user may not create its WAL files: Nix older than 2.22 with no writer open)", file, err)
		}
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return d, nil
}

// Name says where the paths come from, for messages.
func (d *DB) Name() string { return d.file }

// Close closes the database.
func (d *DB) Close() error {
	if d.conn != nil {
		d.conn.Close()
	}
	return d.db.Close()
}

// Poll lists the valid paths and reports those new or changed since the
// last poll, and those gone. The listing is skipped while the database's
// data_version says no one has written it since.
func (d *DB) Poll(ctx context.Context, put func(*pathinfo.Info) error, gone func(string)) error {
	var version int64
	if err := d.conn.QueryRowContext(ctx, "pragma data_version").Scan(&version); err != nil {
		return fmt.Errorf("%s: %w", d.file, err)
	}
	if d.listed && version == d.version {
		return nil
	}
	cur, err := d.list(ctx)
	if err != nil {
		return err
	}
	for p := range d.rows {
		if _, ok := cur[p]; !ok {
			delete(d.rows, p)
			gone(p)
		}
	}
	var unreadable []error
	for p, r := range cur {
		if old, ok := d.rows[p]; ok && old == r {
			continue
		}
		info, err := d.info(ctx, d.conn, p)
		switch {
		case errors.Is(err, pathinfo.ErrNotFound):
			continue // gone since the listing: the next poll sees it
		case errors.Is(err, errRow):
			// Not retried until the row changes; said once.
			unreadable = append(unreadable, err)
		case err != nil:
			return err
		default:
			if err := put(info); err != nil {
				return err
			}
		}
		d.rows[p] = r
	}
	d.version, d.listed = version, true
	if len(unreadable) > 0 {
		return fmt.Errorf("%d paths skipped, such as: %w", len(unreadable), unreadable[0])
	}
	return nil
}

// errRow marks a row this package cannot read (not the database failing).
var errRow = errors.New("unreadable row")

// list reads every valid path's id and signatures, in one statement.
func (d *DB) list(ctx context.Context) (map[string]row, error) {
	rows, err := d.conn.QueryContext(ctx, "select id, path, sigs from ValidPaths")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.file, err)
	}
	defer rows.Close()
	out := make(map[string]row, len(d.rows))
	for rows.Next() {
		var r row
		var p string
		var sigs sql.NullString
		if err := rows.Scan(&r.id, &p, &sigs); err != nil {
			return nil, fmt.Errorf("%s: %w", d.file, err)
		}
		h := fnv.New64a()
		h.Write([]byte(sigs.String))
		r.sigs = h.Sum64()
		out[p] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", d.file, err)
	}
	return out, nil
}

// Info reads one valid path's info, or pathinfo.ErrNotFound, with the
// queries Nix itself makes, on a connection of its own (not the poll's).
func (d *DB) Info(ctx context.Context, path string) (*pathinfo.Info, error) {
	return d.info(ctx, d.db, path)
}

// querier is a connection, or the pool.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (d *DB) info(ctx context.Context, q querier, path string) (*pathinfo.Info, error) {
	var (
		id           int64
		hash         string
		regTime      sql.NullInt64
		deriver      sql.NullString
		narSize      sql.NullInt64
		sigs, ca     sql.NullString
		info         = &pathinfo.Info{StorePath: path}
		errNotParsed = func(what string, err error) error {
			return fmt.Errorf("%w: %s: %s of %s: %v", errRow, d.file, what, path, err)
		}
	)
	err := q.QueryRowContext(ctx,
		"select id, hash, registrationTime, deriver, narSize, sigs, ca from ValidPaths where path = ?", path).
		Scan(&id, &hash, &regTime, &deriver, &narSize, &sigs, &ca)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, pathinfo.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.file, err)
	}
	// Nix stores the hash as sha256:<base16>.
	if info.NarHash, err = storepath.ParseNarHash(hash); err != nil {
		return nil, errNotParsed("hash", err)
	}
	info.NarSize = uint64(max(narSize.Int64, 0))
	info.RegistrationTime = regTime.Int64
	info.Deriver = deriver.String
	info.CA = ca.String
	info.Sigs = strings.Fields(sigs.String)
	rows, err := q.QueryContext(ctx,
		"select path from Refs join ValidPaths on reference = id where referrer = ? order by path", id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.file, err)
	}
	defer rows.Close()
	for rows.Next() {
		var ref string
		if err := rows.Scan(&ref); err != nil {
			return nil, fmt.Errorf("%s: %w", d.file, err)
		}
		info.References = append(info.References, ref)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", d.file, err)
	}
	return info, nil
}

// Dump writes a store path's NAR from the files under root.
func (d *DB) Dump(ctx context.Context, path string, w io.Writer) error {
	return dumpUnder(ctx, d.root, d.storeDir, path, w)
}

// dumpUnder dumps a store path that lies under root on disk: the one way
// this package dumps NARs from files (localSource, DB and DaemonWatch).
func dumpUnder(ctx context.Context, root, storeDir, path string, w io.Writer) error {
	sp, err := storepath.Parse(storeDir, path)
	if err != nil {
		return err
	}
	return nar.Dump(ctx, nar.NewWriter(w), filepath.Join(root, sp.String()))
}
