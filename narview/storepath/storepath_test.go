package storepath

import (
	"crypto/sha256"
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	p, err := Parse("/nix/store", "/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw-go1.25.0")
	if err != nil {
		t.Fatal(err)
	}
	if p.Hash != "a9zpn38rqprns64gwcxfjp10iskh33lw" || p.Name != "go1.25.0" || p.String() != "/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw-go1.25.0" {
		t.Fatalf("%+v", p)
	}
	for _, bad := range []string{
		"/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw",      // no name
		"/nix/store/a9zpn38rqprns64gwcxfjp10iskh33l-x",     // short hash
		"/nix/store/e9zpn38rqprns64gwcxfjp10iskh33lw-go",   // 'e' is not nix-base32
		"/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw-.x",   // leading dot
		"/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw-a b",  // space
		"/gnu/store/a9zpn38rqprns64gwcxfjp10iskh33lw-go",   // other store
		"/nix/store/a9zpn38rqprns64gwcxfjp10iskh33lw-go/x", // inside a path
		"relative",
	} {
		if _, err := Parse("/nix/store", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestNarHashNotations(t *testing.T) {
	h := NarHash(sha256.Sum256([]byte("nar")))
	for _, s := range []string{h.String(), h.Hex(), h.SRI(), "sha256:" + h.Hex(), h.String()[len("sha256:"):]} {
		got, err := ParseNarHash(s)
		if err != nil || got != h {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, bad := range []string{"", "md5:abc", "sha256:xyz", "sha512-AAAA"} {
		if _, err := ParseNarHash(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
