package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
)

// The operations answered the same whatever the store holds, as one
// table: accepted and done (options, GC roots, build logs), answered with
// nothing (what a substituter or a derivation would give: the node is
// neither), or refused with the reason. Each reads its arguments first,
// so that the connection goes on; a store path among them is checked as
// everywhere else.

// fixedOp is an op's arguments and its answer.
type fixedOp struct {
	args   argsReader
	reply  fixedReply
	refuse string // when set, the op fails with this message instead
}

// fixedReply is what follows STDERR_LAST.
type fixedReply int

const (
	replyNothing fixedReply = iota
	replyDone               // 1: true, or done
	replyNone               // 0: false, or an empty list or map
)

var fixedOps = map[uint64]fixedOp{
	// Accepted: options, GC roots and build logs change nothing here.
	opSetOptions: {args: readAll(
		skipUint64s(12),          // flags and settings a store without builders does not use
		since(12, skipStringMap), // overrides
	), reply: replyNothing},
	opAddTempRoot:     {args: skipString, reply: replyDone},
	opAddIndirectRoot: {args: skipString, reply: replyDone},
	opSyncWithGC:      {reply: replyDone},
	opFindRoots:       {reply: replyNone},
	opOptimiseStore:   {reply: replyDone},
	// No errors found: `p2pstore verify` does the real check.
	opVerifyStore: {args: skipUint64s(2), reply: replyNone}, // checkContents, repair
	opAddBuildLog: {args: readAll(skipString, skipFramed), reply: replyDone},

	// What a substituter or a derivation would give: none.
	opHasSubstitutes:             {args: skipPath, reply: replyNone},
	opQuerySubstitutablePaths:    {args: skipPaths, reply: replyNone},
	opQuerySubstitutablePathInfo: {args: skipPath, reply: replyNone},
	opQuerySubstitutablePathInfos: {args: readAll(
		since(22, skipStringMap), // paths and their CAs
		before(22, skipPaths),
	), reply: replyNone},
	opQueryDerivationOutputs:     {args: skipPath, reply: replyNone},
	opQueryValidDerivers:         {args: skipPath, reply: replyNone},
	opQueryDerivationOutputNames: {args: skipPath, reply: replyNone},
	opQueryDerivationOutputMap:   {args: skipPath, reply: replyNone},
	opQueryRealisation:           {args: skipString, reply: replyNone},

	// Refused, with the reason: what a store without builders, that
	// never deletes a path, cannot do.
	opBuildDerivation: {args: readAll(
		skipString,    // drv path
		skipTuples(4), // outputs: name, path, hash algo, hash
		skipStrings,   // input sources
		skipString,    // platform
		skipString,    // builder
		skipStrings,   // args
		skipStringMap, // env
		skipUint64,    // build mode
	), refuse: "p2pstore does not build derivations; it only stores and serves paths"},
	opCollectGarbage: {args: readAll(
		skipUint64,     // action
		skipStrings,    // paths to delete
		skipUint64s(5), // ignoreLiveness, maxFreed, 3 obsolete
	), refuse: "p2pstore does not delete store paths; `p2pstore gc` removes only the objects no path uses"},
	opRegisterDrvOutput: {args: readAll(
		skipString,             // realisation (an output id before 1.31)
		before(31, skipString), // its output path
	), refuse: "p2pstore does not record derivation outputs"},
	// Adding a file tree by content address needs the path computed
	// here, which is left to `nix copy --to`: it adds the path it
	// computed with AddToStoreNar.
	opAddToStore: {args: readAll(
		since(25, readAll(
			skipString,  // name
			skipString,  // method
			skipStrings, // references
			skipUint64,  // repair
			skipFramed,  // the data
		)),
		before(25, readAll(
			skipString,     // name
			skipUint64s(2), // fixed, recursive
			skipString,     // hash algo
			skipNAR,        // the data
		)),
	), refuse: "p2pstore does not add files by content address; use `nix copy --to` with a store path"},
	opAddTextToStore: {args: readAll(
		skipString,  // name
		skipData,    // contents
		skipStrings, // references
	), refuse: "p2pstore does not add text files to the store; copy store paths into it with `nix copy --to`"},
}

// answerFixed answers an op of the table.
func (c *conn) answerFixed(op fixedOp) error {
	if op.args != nil {
		if err := op.args(c); err != nil {
			return err
		}
	}
	if op.refuse != "" {
		return &opError{msg: op.refuse}
	}
	c.last()
	switch op.reply {
	case replyDone:
		c.w.Uint64(1)
	case replyNone:
		c.w.Uint64(0)
	}
	return nil
}

// addPermRoot answers with its root argument: the one op outside the
// store whose reply is not fixed.
func (c *conn) addPermRoot(context.Context) error {
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
}

// argsReader reads arguments the server does not use; the readers below
// combine into an op's arguments in the order they come.
type argsReader func(c *conn) error

// readAll reads the arguments of rs in turn. An argument the client got
// wrong (an opError: a Guix store path that is not one) does not stop
// it: the rest is read, so that the connection stays in step.
func readAll(rs ...argsReader) argsReader {
	return func(c *conn) error {
		var wrong error
		for _, r := range rs {
			err := r(c)
			var oe *opError
			if errors.As(err, &oe) {
				wrong = cmp.Or(wrong, err)
				continue
			}
			if err != nil {
				return err
			}
		}
		return wrong
	}
}

// since reads r's arguments from protocol 1.minor on; before, below it.
func since(minor uint64, r argsReader) argsReader {
	return func(c *conn) error {
		if c.minor() < minor {
			return nil
		}
		return r(c)
	}
}

func before(minor uint64, r argsReader) argsReader {
	return func(c *conn) error {
		if c.minor() >= minor {
			return nil
		}
		return r(c)
	}
}

func skipUint64(c *conn) error {
	_, err := c.r.Uint64()
	return err
}

func skipUint64s(n int) argsReader {
	return func(c *conn) error {
		for i := 0; i < n; i++ {
			if _, err := c.r.Uint64(); err != nil {
				return err
			}
		}
		return nil
	}
}

// skipTuples reads a list whose entries are k strings each.
func skipTuples(k int) argsReader {
	return func(c *conn) error {
		n, err := c.r.count()
		if err != nil {
			return err
		}
		for i := 0; i < n*k; i++ {
			if _, err := c.r.String(); err != nil {
				return err
			}
		}
		return nil
	}
}

func skipString(c *conn) error {
	_, err := c.r.String()
	return err
}

func skipStrings(c *conn) error {
	_, err := c.r.Strings()
	return err
}

func skipStringMap(c *conn) error {
	_, err := c.r.StringMap()
	return err
}

// skipPath and skipPaths check what they read as path arguments are.
func skipPath(c *conn) error {
	_, err := c.path()
	return err
}

func skipPaths(c *conn) error {
	_, err := c.paths()
	return err
}

// skipData reads a string of data, which streams through: up to a frame's
// size, not counted against the op's budget.
func skipData(c *conn) error { return c.r.Skip(MaxFrameLen) }

// skipFramed reads framed data to its terminator.
func skipFramed(c *conn) error {
	return (&framedReader{r: c.r, maxSize: MaxFrameLen}).drain()
}

// skipNAR reads a NAR sent without a length: parsing it finds its end.
func skipNAR(c *conn) error {
	if err := readNAR(c.r.r); err != nil {
		return fmt.Errorf("%w: %v", errBadArgs, err)
	}
	return nil
}
