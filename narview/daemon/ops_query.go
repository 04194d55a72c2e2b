package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// The queries: what is valid, a path's info, its NAR. A path the node
// lacks is looked up (Store.PathInfo with lookup) wherever a client asks
// whether it can have it, as an HTTP narinfo request is.

// validInfo returns a path's info, or nil when it is not valid (nor, with
// lookup, found elsewhere): that is an answer for the client, where any
// other error is the store's failure.
func (c *conn) validInfo(ctx context.Context, p string, lookup bool) (*pathinfo.Info, error) {
	info, err := c.srv.store.PathInfo(ctx, p, lookup)
	if errors.Is(err, pathinfo.ErrNotFound) {
		return nil, nil
	}
	return info, err
}

// pathAndInfo reads a store path argument and looks it up: its info is
// nil when it is not valid, nor found.
func (c *conn) pathAndInfo(ctx context.Context) (string, *pathinfo.Info, error) {
	p, err := c.path()
	if err != nil {
		return "", nil, err
	}
	info, err := c.validInfo(ctx, p, true)
	return p, info, err
}

// validPath reads a path argument and returns its info; a path that is
// not valid (nor found) is the client's error.
func (c *conn) validPath(ctx context.Context) (*pathinfo.Info, error) {
	p, info, err := c.pathAndInfo(ctx)
	if err == nil && info == nil {
		err = clientErr("path '%s' is not valid", p)
	}
	return info, err
}

func (c *conn) isValidPath(ctx context.Context) error {
	_, info, err := c.pathAndInfo(ctx)
	if err != nil {
		return err
	}
	c.last()
	c.w.Bool(info != nil)
	return nil
}

func (c *conn) queryValidPaths(ctx context.Context) error {
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
}

func (c *conn) validPaths(ctx context.Context, ps []string, lookup bool) ([]string, error) {
	var valid []string
	for _, p := range ps {
		info, err := c.validInfo(ctx, p, lookup)
		if err != nil {
			return nil, err
		}
		if info != nil {
			valid = append(valid, p)
		}
	}
	return valid, nil
}

// queryPathInfo answers a path that is not valid with an empty reply from
// 1.17 on, and with an error before.
func (c *conn) queryPathInfo(ctx context.Context) error {
	p, info, err := c.pathAndInfo(ctx)
	if err != nil {
		return err
	}
	if info == nil && c.minor() < 17 {
		return clientErr("path '%s' is not valid", p)
	}
	c.last()
	if info == nil {
		c.w.Uint64(0)
		return nil
	}
	if c.minor() >= 17 {
		c.w.Uint64(1)
	}
	writePathInfo(c.w, info, false, c.minor() >= 16)
	return nil
}

// queryPathFromHashPart answers "" for a hash part no path has, and an
// error for a string that is not a hash part at all, as the daemons do.
func (c *conn) queryPathFromHashPart(ctx context.Context) error {
	h, err := c.r.String()
	if err != nil {
		return err
	}
	if storepath.ValidateHash(h) != nil {
		return clientErr("invalid hash part")
	}
	p, err := c.srv.store.PathFromHashPart(ctx, h)
	if errors.Is(err, pathinfo.ErrNotFound) {
		p, err = "", nil
	}
	if err != nil {
		return err
	}
	c.last()
	c.w.String(p)
	return nil
}

func (c *conn) queryAllValidPaths(ctx context.Context) error {
	ps, err := c.srv.store.AllPaths(ctx)
	if err != nil {
		return err
	}
	c.last()
	c.w.Strings(ps)
	return nil
}

func (c *conn) queryDeriver(ctx context.Context) error {
	p, err := c.path()
	if err != nil {
		return err
	}
	info, err := c.srv.store.PathInfo(ctx, p, false)
	if errors.Is(err, pathinfo.ErrNotFound) {
		return clientErr("path '%s' is not valid", p)
	}
	if err != nil {
		return err
	}
	c.last()
	c.w.String(info.Deriver)
	return nil
}

func (c *conn) queryReferrers(ctx context.Context) error {
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
}

// referrers scans every valid path's references: the index keeps no
// reverse map, and no client asks often.
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

// narFromPath sends the NAR unframed after STDERR_LAST; the client finds
// its end by parsing it.
func (c *conn) narFromPath(ctx context.Context) error {
	// Check before STDERR_LAST: after it, a failure cannot be told.
	info, err := c.validPath(ctx)
	if err != nil {
		return err
	}
	c.last()
	if err := c.w.Flush(); err != nil {
		return err
	}
	if err := c.srv.store.WriteNAR(ctx, info, c.raw); err != nil {
		return fmt.Errorf("sending the NAR of %s: %w", info.StorePath, err)
	}
	return nil
}
