// Package localstore reads store paths out of the local Nix installation.
// Where a nix-daemon runs, it asks the daemon, over the worker protocol,
// for path infos and NARs; where none runs (single-user Nix), it asks Nix
// itself (`nix path-info --json`) for the metadata and dumps the NARs from
// the store directory.
//
// For a node that shares the store it runs on, Watch follows the valid
// paths as they come and go: from Nix's db.sqlite, read-only, or through
// the daemon where the database cannot be read (db.go, watch.go).
//
// OpenStore reads a store at a Nix store URL instead, through Nix alone:
// how Guix paths (store directory /gnu/store) made by Nix get imported.
package localstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/p2pstore/p2pstore/narview/daemon"
	"github.com/p2pstore/p2pstore/narview/pathinfo"
	"github.com/p2pstore/p2pstore/narview/storepath"
)

// nixPathInfo is one path as `nix path-info --json` reports it.
type nixPathInfo struct {
	Path             string   `json:"path"`
	NarHash          string   `json:"narHash"`
	NarSize          uint64   `json:"narSize"`
	References       []string `json:"references"`
	Deriver          string   `json:"deriver"`
	Signatures       []string `json:"signatures"`
	CA               string   `json:"ca"`
	RegistrationTime int64    `json:"registrationTime"`
	Valid            *bool    `json:"valid"`
}

// ResolveArg turns a command-line argument into a store path: a path
// under storeDir names the store path that contains it; anything else
// (such as ./result) is followed through symlinks into the store.
func ResolveArg(storeDir, arg string) (string, error) {
	p, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(p, storeDir+"/") {
		if p, err = filepath.EvalSymlinks(p); err != nil {
			return "", fmt.Errorf("%s: %w", arg, err)
		}
	}
	rest, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok {
		return "", fmt.Errorf("%s is not in the Nix store %s", arg, storeDir)
	}
	base, _, _ := strings.Cut(rest, "/")
	sp, err := storepath.Parse(storeDir, storeDir+"/"+base)
	if err != nil {
		return "", fmt.Errorf("%s: %w", arg, err)
	}
	return sp.String(), nil
}

// Source gives paths of the local store: their infos, sorted so that every
// path comes after those it references, and their NARs.
type Source interface {
	Query(ctx context.Context, paths []string, recursive bool) ([]*pathinfo.Info, error)
	Dump(ctx context.Context, path string, w io.Writer) error
	Close() error
	// Name says where the paths come from, for messages.
	Name() string
}

// DaemonSocket is where a nix-daemon listens: $NIX_DAEMON_SOCKET_PATH, or
// the default.
func DaemonSocket() string {
	if p := os.Getenv("NIX_DAEMON_SOCKET_PATH"); p != "" {
		return p
	}
	return "/nix/var/nix/daemon-socket/socket"
}

// Open returns the nix-daemon as a source if one answers on its socket,
// and the local store otherwise.
func Open() Source {
	if c, err := daemon.Dial(DaemonSocket()); err == nil {
		return &daemonSource{c: c}
	}
	return localSource{}
}

// OpenStore returns a source reading the Nix store at a store URL, such
// as local?store=/gnu/store&real=DIR/gnu/store&state=DIR/state: a store
// whose paths lie under another directory (Guix's) can be made and read
// by Nix that way. Nix gives both the metadata and the NARs
// (nix store dump-path), since the files lie wherever the URL says.
func OpenStore(url string) Source { return localSource{store: url} }

// localSource reads a store with no daemon: metadata from Nix, NARs
// dumped from the files, or by Nix from the store at a URL.
type localSource struct{ store string }

func (l localSource) Name() string {
	if l.store != "" {
		return "the Nix store " + l.store
	}
	return "the local Nix store"
}
func (localSource) Close() error { return nil }

func (l localSource) Dump(ctx context.Context, path string, w io.Writer) error {
	if l.store == "" {
		return dumpUnder(ctx, "/", filepath.Dir(path), path, w)
	}
	cmd := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "store", "dump-path", "--store", l.store, path)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("nix store dump-path: %s", lastLine(msg))
		}
		return fmt.Errorf("nix store dump-path: %w", err)
	}
	return nil
}

// Query asks Nix for the info of paths, and with recursive of their whole
// closure. A path is the path itself, a store derivation (.drv) too: Nix
// 2.8's `nix path-info X.drv` names the derivation's outputs (newer Nix
// the .drv, as nix-store and the daemon do), so derivations are asked for
// apart, with --derivation, which names a .drv itself (and a built path
// its deriver, hence apart).
func (l localSource) Query(ctx context.Context, paths []string, recursive bool) ([]*pathinfo.Info, error) {
	var drvs, others []string
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			drvs = append(drvs, p)
		} else {
			others = append(others, p)
		}
	}
	var infos []*pathinfo.Info
	seen := map[string]bool{}
	for _, group := range []struct {
		paths []string
		drv   bool
	}{{others, false}, {drvs, true}} {
		if len(group.paths) == 0 {
			continue
		}
		got, err := queryNix(ctx, l.store, group.paths, recursive, group.drv)
		if err != nil {
			return nil, err
		}
		for _, in := range got {
			if !seen[in.StorePath] {
				seen[in.StorePath] = true
				infos = append(infos, in)
			}
		}
	}
	return SortByReferences(infos), nil
}

// queryNix runs `nix path-info --json` on paths, in the store at the URL
// store ("" for the default).
func queryNix(ctx context.Context, store string, paths []string, recursive, derivation bool) ([]*pathinfo.Info, error) {
	args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json"}
	if store != "" {
		args = append(args, "--store", store)
	}
	if recursive {
		args = append(args, "--recursive")
	}
	if derivation {
		args = append(args, "--derivation")
	}
	cmd := exec.CommandContext(ctx, "nix", append(args, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("nix path-info: %s", lastLine(msg))
	}
	var nixInfos []nixPathInfo
	if err := json.Unmarshal(out, &nixInfos); err != nil {
		return nil, fmt.Errorf("nix path-info: %w", err)
	}
	infos := make([]*pathinfo.Info, len(nixInfos))
	for i, in := range nixInfos {
		if in.Valid != nil && !*in.Valid {
			return nil, fmt.Errorf("%s is not a valid path in the local Nix store", in.Path)
		}
		h, err := storepath.ParseNarHash(in.NarHash)
		if err != nil {
			return nil, fmt.Errorf("nix path-info: %s: %w", in.Path, err)
		}
		infos[i] = &pathinfo.Info{StorePath: in.Path, NarHash: h, NarSize: in.NarSize, References: in.References,
			Deriver: in.Deriver, Sigs: in.Signatures, CA: in.CA, RegistrationTime: in.RegistrationTime}
	}
	return infos, nil
}

func lastLine(s string) string {
	lines := strings.Split(s, "\n")
	return lines[len(lines)-1]
}

// SortByReferences orders paths so that each comes after those of its
// references that are in the list (self-references aside).
func SortByReferences(infos []*pathinfo.Info) []*pathinfo.Info {
	sort.Slice(infos, func(i, j int) bool { return infos[i].StorePath < infos[j].StorePath })
	byPath := make(map[string]*pathinfo.Info, len(infos))
	for _, in := range infos {
		byPath[in.StorePath] = in
	}
	var out []*pathinfo.Info
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p *pathinfo.Info)
	visit = func(p *pathinfo.Info) {
		if state[p.StorePath] != 0 {
			return
		}
		state[p.StorePath] = 1
		for _, r := range p.References {
			if dep, ok := byPath[r]; ok && r != p.StorePath {
				visit(dep)
			}
		}
		state[p.StorePath] = 2
		out = append(out, p)
	}
	for _, in := range infos {
		visit(in)
	}
	return out
}

// GuixDaemonSocket is where a guix-daemon listens: $GUIX_DAEMON_SOCKET
// (a file name; Guix's guix:// and ssh:// URIs are not read here), or
// the default.
func GuixDaemonSocket() string {
	if p := os.Getenv("GUIX_DAEMON_SOCKET"); p != "" {
		return p
	}
	return "/var/guix/daemon-socket/socket"
}

// OpenGuix returns the guix-daemon as a source, in Guix's dialect of the
// protocol: path infos from its queries, NARs from its exports.
func OpenGuix() (Source, error) {
	sock := GuixDaemonSocket()
	c, err := daemon.DialGuix(sock)
	if err != nil {
		return nil, fmt.Errorf("the guix-daemon at %s (GUIX_DAEMON_SOCKET): %w", sock, err)
	}
	return &daemonSource{c: c, name: "the guix-daemon at " + sock}, nil
}

// daemonSource reads paths through a nix-daemon or a guix-daemon.
type daemonSource struct {
	c    *daemon.Client
	name string // "": the nix-daemon at DaemonSocket
}

func (d *daemonSource) Name() string {
	if d.name != "" {
		return d.name
	}
	return "the nix-daemon at " + DaemonSocket()
}
func (d *daemonSource) Close() error { return d.c.Close() }

func (d *daemonSource) Dump(ctx context.Context, path string, w io.Writer) error {
	return d.c.NarFromPath(path, w)
}

// Query asks the daemon for each path's info, following references for a
// closure.
func (d *daemonSource) Query(ctx context.Context, paths []string, recursive bool) ([]*pathinfo.Info, error) {
	seen := map[string]bool{}
	var out []*pathinfo.Info
	queue := append([]string(nil), paths...)
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		info, err := d.c.QueryPathInfo(p)
		if errors.Is(err, pathinfo.ErrNotFound) {
			return nil, fmt.Errorf("%s is not a valid path in %s", p, d.Name())
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.Name(), err)
		}
		out = append(out, info)
		if recursive {
			queue = append(queue, info.References...)
		}
	}
	return SortByReferences(out), nil
}
