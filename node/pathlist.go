package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// The list of paths, for `p2pstore paths`: one JSON object a line, read
// from the index a page at a time and sent as it is read, so that neither
// side holds the whole list and no read of the index stays open while a
// slow client takes it. A last line {"end":true} tells a whole list from
// one cut short.

// PathEntry is one path the node holds.
type PathEntry struct {
	Path    string `json:"path"`
	NarSize uint64 `json:"nar_size"`
	// Source is how the path came: import, peer, upstream, local (copied
	// from the local Nix store), unknown (recorded before the node kept it).
	Source string `json:"source"`
	Pinned bool   `json:"pinned"`
	Shared bool   `json:"shared"` // given to peers; else private
}

// pathsPage is how many records one read of the index lists.
const pathsPage = 1000

func (n *Node) servePaths(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	for after := ""; ; {
		page, err := n.index.Page(after, pathsPage)
		if err != nil {
			// The status line has gone with the first page: the client
			// sees an error line where the list stops.
			enc.Encode(apiError{Error: err.Error()})
			bw.Flush()
			return
		}
		if len(page) == 0 {
			break
		}
		for _, info := range page {
			if err := enc.Encode(PathEntry{Path: info.StorePath, NarSize: info.NarSize, Source: sourceLabel(info.Source),
				Pinned: info.Pinned, Shared: n.shares(info)}); err != nil {
				return // the client went away
			}
		}
		after = page[len(page)-1].HashPart()
		if r.Context().Err() != nil {
			return
		}
	}
	bw.WriteString("{\"end\":true}\n")
	bw.Flush()
}

// Paths calls fn with each path the node holds, in hash order, as the list
// arrives.
func (c *Client) Paths(ctx context.Context, fn func(PathEntry) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://p2pstore/api/v1/paths", nil)
	if err != nil {
		return err
	}
	ended := false
	err = c.stream(req, func(line []byte) error {
		var e struct {
			PathEntry
			Error string `json:"error"`
			End   bool   `json:"end"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("the node's list of paths: %w", err)
		}
		if e.Error != "" {
			return errors.New(e.Error)
		}
		if e.End {
			ended = true
			return nil
		}
		return fn(e.PathEntry)
	})
	if err == nil && !ended {
		err = errors.New("the node's list of paths ended early")
	}
	return err
}

// stream sends req and calls fn with each line of a 200 answer.
func (c *Client) stream(req *http.Request, fn func(line []byte) error) error {
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := readLine(br, maxMetaLine)
		if err == io.EOF && len(line) == 0 {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}
