package daemon

import (
	"context"
	"fmt"
	"strings"

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// The requests to make paths valid: a store without builders does that
// for a path it has or can look up, and refuses the rest. Nix 2.8's
// `nix copy` asks for exactly that. BuildDerivation, which can only be
// refused, is in the table of fixed answers.

func (c *conn) ensurePath(ctx context.Context) error {
	p, info, err := c.pathAndInfo(ctx)
	if err != nil {
		return err
	}
	if info == nil {
		return clientErr("path '%s' does not exist and cannot be created", p)
	}
	c.last()
	c.w.Uint64(1)
	return nil
}

func (c *conn) buildPaths(ctx context.Context) error {
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
}

func (c *conn) buildPathsWithResults(ctx context.Context) error {
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
}

func (c *conn) queryMissing(ctx context.Context) error {
	reqs, err := c.r.Strings()
	if err != nil {
		return err
	}
	// The reply's sets hold store paths, not DerivedPaths: a derivation we
	// cannot build is reported by its .drv path.
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
}

// unbuildable says why a DerivedPath cannot be "built" (made valid), or ""
// when it is a valid opaque path.
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
