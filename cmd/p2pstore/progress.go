package main

import (
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/p2pstore/p2pstore/node"
)

// operationBar draws how far a node's operation (fetch, verify, gc) is:
// one line on stderr, redrawn, cleared at the end. There is none when
// stderr is not a terminal (a script, a log), so nothing but the result
// goes to pipes and files.
type operationBar struct {
	bar   *progressbar.ProgressBar
	phase string
	unit  string
	known bool // the bar has a total (else it counts)
}

func newOperationBar() *operationBar {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil
	}
	return &operationBar{}
}

// client returns c, following its operations with the bar if there is one.
func (b *operationBar) client(c *node.Client) *node.Client {
	if b == nil {
		return c
	}
	return c.WithProgress(b.update)
}

// update shows p: a bar when its total is known, else a counter; a new
// phase starts a new line.
func (b *operationBar) update(p node.Progress) {
	if b.bar == nil || p.Phase != b.phase || p.Unit != b.unit || (p.Total > 0) != b.known {
		b.clear()
		b.phase, b.unit, b.known = p.Phase, p.Unit, p.Total > 0
		max := int64(-1)
		if p.Total > 0 {
			max = int64(p.Total)
		}
		opts := []progressbar.Option{
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(p.Phase),
			progressbar.OptionShowBytes(p.Unit == "bytes"),
			progressbar.OptionUseIECUnits(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100 * time.Millisecond),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetPredictTime(p.Total > 0),
		}
		if p.Unit != "" { // a phase with nothing to count shows a spinner
			opts = append(opts, progressbar.OptionShowCount())
		}
		b.bar = progressbar.NewOptions64(max, opts...)
	}
	if p.Total > 0 && int64(p.Total) != b.bar.GetMax64() {
		b.bar.ChangeMax64(int64(p.Total))
	}
	b.bar.Set64(int64(p.Done))
}

func (b *operationBar) clear() {
	if b != nil && b.bar != nil {
		b.bar.Clear()
		b.bar = nil
	}
}
