package httpcache

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/p2pstore/p2pstore/narview/guix"
)

// A Guix narinfo names the references and the deriver by basename and
// percent-encodes the basename in its NAR URLs, which resolve; a narinfo
// signed before 2022 keeps its signed NAR entries and gets the node's
// after them.
func TestGuixNarinfo(t *testing.T) {
	f := newFakePaths([]byte("nar bytes"))
	base := testHash + "-a+b"
	f.info.StorePath = "/gnu/store/" + base
	f.info.References = []string{"/gnu/store/" + testHash + "-a+b", "/gnu/store/1b8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-lib"}
	f.info.Deriver = "/gnu/store/2c8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-a.drv"
	g := NewGuix(f, GuixOptions{StoreDir: "/gnu/store"})
	get := func(p string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, p, nil))
		return w
	}
	w := get("/" + testHash + ".narinfo")
	ni, err := guix.Parse(w.Body.Bytes())
	if err != nil {
		t.Fatalf("%v:\n%s", err, w.Body)
	}
	if strings.Join(ni.References, " ") != testHash+"-a+b 1b8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-lib" || ni.Deriver != "2c8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-a.drv" {
		t.Errorf("narinfo:\n%s", w.Body)
	}
	if ni.NARs[0].URL != "nar/zstd/"+testHash+"-a%2Bb" {
		t.Errorf("URL %q", ni.NARs[0].URL)
	}
	for _, n := range ni.NARs {
		if w := get("/" + strings.ReplaceAll(n.URL, "%2B", "+")); w.Code != 200 {
			t.Errorf("%s: %d", n.URL, w.Code)
		}
	}

	// Old layout: the signed text holds a gzip entry.
	old := "StorePath: /gnu/store/" + base + "\nURL: nar/gzip/" + base + "\nCompression: gzip\nFileSize: 5\nNarHash: " + f.info.NarHash.String() +
		"\nNarSize: 9\nReferences: \nSignature: 1;h;eA==\n"
	f.info.GuixNarinfo = old
	w = get("/" + testHash + ".narinfo")
	if !strings.HasPrefix(w.Body.String(), old) || !strings.Contains(w.Body.String(), "URL: nar/zstd/") {
		t.Errorf("an old narinfo came out as:\n%s", w.Body)
	}
}

// The listener keeps the narinfo texts it makes, and serves a kept one
// only while the record is the one it was made from: each change of a
// field the text shows is served at once, and every answer is the text
// AppendGuixNarinfo makes for the record as it is then.
func TestGuixNarinfoFollowsRecord(t *testing.T) {
	f := newFakePaths([]byte("nar bytes"))
	f.info.StorePath = "/gnu/store/" + testHash + "-a"
	g := NewGuix(f, GuixOptions{StoreDir: "/gnu/store"})
	check := func(change string) {
		t.Helper()
		want, err := AppendGuixNarinfo(nil, f.info, -1)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // made, then kept
			w := httptest.NewRecorder()
			g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/"+testHash+".narinfo", nil))
			if w.Code != http.StatusOK || w.Body.String() != string(want) {
				t.Fatalf("after %s: %d\n%s\nwant\n%s", change, w.Code, w.Body, want)
			}
			if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(len(want)) {
				t.Fatalf("after %s: Content-Length %s for %d bytes", change, cl, len(want))
			}
		}
	}
	check("nothing")
	f.info.References = append(f.info.References, "/gnu/store/1b8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-lib")
	check("a new reference")
	f.info.References[0] = "/gnu/store/2c8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-lib" // in place
	check("a reference changed in place")
	f.info.Deriver = "/gnu/store/2c8dxr1ivgbz2ambz6ymxy4nbz1gjzfy-a.drv"
	check("a deriver")
	f.info.NarSize++
	check("NarSize")
	f.info.NarHash[0] ^= 1
	check("NarHash")
	f.info.StorePath = "/gnu/store/" + testHash + "-b"
	check("the name")
	f.info.GuixNarinfo = "StorePath: " + f.info.StorePath + "\nNarHash: " + f.info.NarHash.String() +
		"\nNarSize: 9\nReferences: \nSignature: 1;h;eA==\nURL: nar/none/" + testHash + "-b\nCompression: none\n"
	check("a signed narinfo")
	f.info.GuixNarinfo = strings.Replace(f.info.GuixNarinfo, "eA==", "eB==", 1)
	check("another signature")
}

// FileSize for every NAR entry or none: without the zstd NAR's size, zstd,
// gzip and none without sizes; once it is known (after the text made
// without it has been served guixSizeRetry), zstd and none with theirs,
// which Guix's client pairs with the right URLs.
func TestGuixNarinfoFileSize(t *testing.T) {
	f := newFakePaths([]byte("nar bytes"))
	f.info.StorePath = "/gnu/store/" + testHash + "-a"
	g := NewGuix(f, GuixOptions{StoreDir: "/gnu/store"})
	get := func() *guix.NarInfo {
		t.Helper()
		w := httptest.NewRecorder()
		g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/"+testHash+".narinfo", nil))
		ni, err := guix.Parse(w.Body.Bytes())
		if err != nil {
			t.Fatalf("%v:\n%s", err, w.Body)
		}
		return ni
	}
	entries := func(ni *guix.NarInfo) string {
		var s []string
		for _, n := range ni.NARs {
			s = append(s, fmt.Sprintf("%s %d", n.Compression, n.FileSize))
		}
		return strings.Join(s, ", ")
	}
	if got := entries(get()); got != "zstd 0, gzip 0, none 0" {
		t.Errorf("without the zstd size: %s", got)
	}
	f.zstSize = 7
	if got := entries(get()); got != "zstd 0, gzip 0, none 0" {
		t.Errorf("the text kept a moment: %s", got)
	}
	text, _ := g.texts.Get(testHash)
	text.made = text.made.Add(-guixSizeRetry)
	if got := entries(get()); got != "zstd 7, none 9" {
		t.Errorf("with the zstd size: %s", got)
	}
}
