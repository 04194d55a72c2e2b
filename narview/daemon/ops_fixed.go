package daemon

import (
	"fmt"
	"io"

	"github.com/p2pstore/p2pstore/narview/nar"
)

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
