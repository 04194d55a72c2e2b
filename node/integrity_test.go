package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
)

// An invalid path is gone from the index, and the record that makes it
// valid again keeps its pin, its privacy and, for the same NAR, its
// signatures; a path whose stored contents do not render to its NarHash
// fails its proof and is made invalid again.
func TestInvalidPathCarriedOver(t *testing.T) {
	n := limitNode(t, 0)
	h := addFilePath(t, n, 1, true)
	rec, err := n.index.Get(h)
	if err != nil {
		t.Fatal(err)
	}
	rec.Private, rec.Sigs = true, []string{"own-1:AAAA"}
	if err := n.putPath(rec); err != nil {
		t.Fatal(err)
	}
	if !n.invalidate(hurtPath{hash: h, storePath: rec.StorePath, problem: "chunk X: damaged", hurt: []castore.Digest{rec.Root.Digest}}) {
		t.Fatal("invalidate did nothing")
	}
	if n.index.Has(h) || n.invalidate(hurtPath{hash: h}) {
		t.Fatal("an invalid path is still valid")
	}
	if tot, _ := n.index.Totals(); tot.Paths != 0 || tot.Pinned != 0 {
		t.Fatalf("totals %+v", tot)
	}

	fetched := *rec
	fetched.Pinned, fetched.Private, fetched.Sigs = false, false, []string{"peer-1:BBBB"}
	n.carryOver(&fetched)
	if !fetched.Pinned || !fetched.Private || !slices.Contains(fetched.Sigs, "own-1:AAAA") || !slices.Contains(fetched.Sigs, "peer-1:BBBB") {
		t.Fatalf("carried over: %+v", fetched)
	}
	other := *rec
	other.NarSize++ // another NAR: the old signatures do not sign it
	other.Sigs = []string{"peer-1:CCCC"}
	n.carryOver(&other)
	if len(other.Sigs) != 1 || !other.Pinned {
		t.Fatalf("carried over to another NAR: %+v", other)
	}

	// Valid again; but addFilePath's NarHash is not its NAR's.
	if err := n.putPath(&fetched); err != nil {
		t.Fatal(err)
	}
	if _, err := n.index.Invalid(h); !errors.Is(err, pathinfo.ErrNotFound) {
		t.Fatalf("a path put again is still listed invalid: %v", err)
	}
	if err := n.provePath(context.Background(), h); err == nil || !strings.Contains(err.Error(), "render to a NAR") {
		t.Fatalf("proof of a path that does not render to its NarHash: %v", err)
	}
	if inv, err := n.index.Invalid(h); err != nil || !strings.HasPrefix(inv.Reason, "repaired, but") || n.index.Has(h) {
		t.Fatalf("after a failed proof: %+v %v", inv, err)
	}
}
