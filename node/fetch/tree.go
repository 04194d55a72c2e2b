package fetch

import (
	"context"
	"errors"
	"fmt"

	"github.com/p2pstore/p2pstore/castore"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/node/transfer"
)

// tree is a path's tree as a job learns it: its directories, its files in
// NAR order, and their chunk lists.
type tree struct {
	dirs       map[castore.Digest]*castore.Directory
	raws       [][]byte // the directories as they came, to store
	files      []castore.Node
	lists      map[castore.Digest][]castore.ChunkRef // of every file, stored or not
	listSource map[castore.Digest]Source             // who gave each list the node lacked
}

// getTree gets the directories of the path's tree from one of the
// sources, and the chunk lists of the files of several chunks the node
// lacks; lease holds what the tree uses, from before the store is asked
// what it has.
func (f *Fetcher) getTree(ctx context.Context, sources []Source, info *pathinfo.Info, lease *castore.Lease) (*tree, error) {
	t := &tree{dirs: map[castore.Digest]*castore.Directory{}, listSource: map[castore.Digest]Source{}}
	if info.Root.Type == castore.TypeDirectory {
		err := f.anySource(ctx, sources, func(src Source) error {
			t.dirs, t.raws = map[castore.Digest]*castore.Directory{}, nil
			return src.Directories(ctx, info.Root.Digest, func(d castore.Digest, dir *castore.Directory, raw []byte) error {
				t.dirs[d], t.raws = dir, append(t.raws, raw)
				return nil
			})
		})
		if err != nil {
			return nil, fmt.Errorf("directories: %w", err)
		}
	}
	t.files = narOrderFiles(info.Root, t.dirs)
	for d := range t.dirs {
		lease.Hold(d)
	}
	for _, file := range t.files {
		lease.Hold(file.Digest)
	}
	t.lists = make(map[castore.Digest][]castore.ChunkRef, len(t.files))
	var multi []transfer.BlobRef
	_ = f.store.View(func(v *castore.View) error {
		for _, file := range t.files {
			if _, ok := t.lists[file.Digest]; ok || file.Size == 0 {
				continue
			}
			if file.Size <= castore.MinChunkSize { // always one chunk, the file
				t.lists[file.Digest] = []castore.ChunkRef{{Digest: file.Digest, Size: uint32(file.Size)}}
			} else if refs, err := v.BlobChunks(file.Digest, file.Size); err == nil {
				t.lists[file.Digest] = refs // the node has this file already
			} else {
				t.lists[file.Digest] = nil
				multi = append(multi, transfer.BlobRef{Digest: file.Digest, Size: file.Size})
			}
		}
		return nil
	})
	for i := 0; i < len(multi); i += transfer.MaxBlobsPerRequest {
		batch := multi[i:min(i+transfer.MaxBlobsPerRequest, len(multi))]
		err := f.anySource(ctx, sources, func(src Source) error {
			got, err := src.ChunkLists(ctx, batch)
			if err != nil {
				return err
			}
			for k, b := range batch {
				refs := got[k]
				if refs == nil {
					refs = []castore.ChunkRef{{Digest: b.Digest, Size: uint32(b.Size)}}
				}
				t.lists[b.Digest], t.listSource[b.Digest] = refs, src
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("chunk lists: %w", err)
		}
	}
	return t, nil
}

// narOrderFiles lists the files of a tree in NAR order.
func narOrderFiles(root castore.Node, dirs map[castore.Digest]*castore.Directory) []castore.Node {
	var out []castore.Node
	var walk func(n castore.Node)
	walk = func(n castore.Node) {
		switch n.Type {
		case castore.TypeFile:
			out = append(out, n)
		case castore.TypeDirectory:
			if dir := dirs[n.Digest]; dir != nil {
				dir.EachEntry(func(_ []byte, e castore.Node) error { walk(e); return nil })
			}
		}
	}
	walk(root)
	return out
}

// narChunk is what a job knows of a chunk of its NAR.
type narChunk struct {
	uses     int32 // how often the NAR uses it
	fetching bool  // the job downloads it: the store lacked it
	spent    bool  // the renders have taken it from the handoff that often
}

// plan returns what the job knows of each chunk of the tree's NAR, and
// the chunks to download, in NAR order, so that a streaming reader finds
// them arriving in the order it needs them.
func (t *tree) plan(lease *castore.Lease) (map[castore.Digest]narChunk, []castore.Digest) {
	var used []castore.Digest // each once, in NAR order
	chunks := make(map[castore.Digest]narChunk, len(t.lists))
	for _, file := range t.files {
		for _, r := range t.lists[file.Digest] {
			c, seen := chunks[r.Digest]
			if c.uses++; !seen {
				used = append(used, r.Digest)
			}
			chunks[r.Digest] = c
		}
	}
	missing := lease.Missing(used)
	for _, d := range missing {
		c := chunks[d]
		c.fetching = true
		chunks[d] = c
	}
	return chunks, missing
}

// anySource runs try against the sources in turn until one succeeds,
// penalising those that lie or stall.
func (f *Fetcher) anySource(ctx context.Context, sources []Source, try func(Source) error) error {
	err := errors.New("no source to ask")
	for _, src := range sources {
		if f.penalised(src) {
			continue
		}
		if err = try(src); err == nil {
			return nil
		}
		f.penaliseFor(src, err)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

// chunkBytes sums the sizes of the chunks ds of the tree's files, each
// once.
func (t *tree) chunkBytes(ds []castore.Digest) uint64 {
	want := make(map[castore.Digest]bool, len(ds))
	for _, d := range ds {
		want[d] = true
	}
	var n uint64
	for _, file := range t.files {
		for _, r := range t.lists[file.Digest] {
			if want[r.Digest] {
				n += uint64(r.Size)
				want[r.Digest] = false
			}
		}
	}
	return n
}
