// Package localstore reads store paths out of the local Nix installation:
// their metadata from Nix itself (`nix path-info --json`, which works with
// or without a running nix-daemon) and their NARs from the store directory.
package localstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/p2pstore/p2pstore/narview/storepath"
)

// PathInfo is one path as Nix reports it.
type PathInfo struct {
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

// Query asks Nix for the info of paths, and with recursive of their whole
// closure. The result is sorted so that every path comes after the paths it
// references.
func Query(ctx context.Context, paths []string, recursive bool) ([]PathInfo, error) {
	args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json"}
	if recursive {
		args = append(args, "--recursive")
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
	var infos []PathInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("nix path-info: %w", err)
	}
	for _, in := range infos {
		if in.Valid != nil && !*in.Valid {
			return nil, fmt.Errorf("%s is not a valid path in the local Nix store", in.Path)
		}
	}
	return SortByReferences(infos), nil
}

func lastLine(s string) string {
	lines := strings.Split(s, "\n")
	return lines[len(lines)-1]
}

// SortByReferences orders paths so that each comes after those of its
// references that are in the list (self-references aside).
func SortByReferences(infos []PathInfo) []PathInfo {
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	byPath := make(map[string]*PathInfo, len(infos))
	for i := range infos {
		byPath[infos[i].Path] = &infos[i]
	}
	var out []PathInfo
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p *PathInfo)
	visit = func(p *PathInfo) {
		if state[p.Path] != 0 {
			return
		}
		state[p.Path] = 1
		for _, r := range p.References {
			if dep, ok := byPath[r]; ok && r != p.Path {
				visit(dep)
			}
		}
		state[p.Path] = 2
		out = append(out, *p)
	}
	for i := range infos {
		visit(&infos[i])
	}
	return out
}

// Exists reports whether a store path is present on disk.
func Exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
