package fetch

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/zeebo/blake3"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/internal/counting"
	"github.com/p2pstore/p2pstore/narview/nar"
	"github.com/p2pstore/p2pstore/narview/storepath"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// The content checks that follow a download when the tree's signatures
// do not cover every byte already (job.go says when each runs). Both read
// chunks as they are committed.

// checkNAR renders the NAR as the chunks arrive and checks it against the
// signed NarHash and NarSize.
func (j *Job) checkNAR(ctx context.Context) error {
	h := sha256.New()
	cw := &counting.Writer{W: h}
	if err := j.render(ctx, cw, nar.Part{Compression: nar.CompressionNone}, false); err != nil {
		return err
	}
	var got storepath.NarHash
	h.Sum(got[:0])
	if info := j.Info(); got != info.NarHash || uint64(cw.N) != info.NarSize {
		return fmt.Errorf("%w: the tree of %s renders to a NAR with hash %s and size %d, not the signed %s and %d",
			transfer.ErrBadData, info.StorePath, got, cw.N, info.NarHash, info.NarSize)
	}
	return nil
}

// checkBlobs checks each file of several chunks the node did not hold
// against its digest, in NAR order, as its chunks arrive.
func (j *Job) checkBlobs(ctx context.Context, files []castore.Node) error {
	st := j.f.store
	j.mu.Lock()
	attempt, lists := j.attempt, j.lists
	j.mu.Unlock()
	checked := map[castore.Digest]bool{}
	// The chunks were checked as they arrived; the blob's digest covers
	// their bytes again, so they are read without a second check.
	r := st.NewReader()
	defer r.Close()
	h := blake3.New()
	for _, file := range files {
		refs := lists[file.Digest]
		if len(refs) < 2 || checked[file.Digest] || st.HasBlob(file.Digest, file.Size) {
			continue
		}
		checked[file.Digest] = true
		if err := j.waitChunks(ctx, attempt, refs, false); err != nil {
			return err
		}
		h.Reset()
		if err := r.WriteChunks(ctx, h, refs); err != nil {
			return err
		}
		var got castore.Digest
		h.Sum(got[:0])
		if got != file.Digest {
			return &badBlob{digest: file.Digest, got: got}
		}
	}
	return nil
}

// badBlob is a chunk list that does not add up to its blob.
type badBlob struct{ digest, got castore.Digest }

func (b *badBlob) Error() string {
	return fmt.Sprintf("the chunks listed for blob %s hash to %s", b.digest, b.got)
}

func (b *badBlob) Unwrap() error { return transfer.ErrBadData }
