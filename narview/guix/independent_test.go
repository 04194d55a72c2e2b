package guix

import (
	"bytes"
	"testing"

	"github.com/p2pstore/p2pstore/internal/guixtest"
)

// independentVerify is guixtest.Verify, failing t on a narinfo it cannot
// pick apart.
func independentVerify(t *testing.T, narinfo []byte, q []byte) bool {
	t.Helper()
	ok, err := guixtest.Verify(narinfo, q)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestIndependentVerifierOnRealSignatures: the verifier above accepts the
// build farm's real signatures, and refuses them for other text or
// another key, so it can be trusted to judge ours.
func TestIndependentVerifierOnRealSignatures(t *testing.T) {
	ci := mustPublicKey(t, "testdata/ci.guix.gnu.org.pub")
	bordeaux := mustPublicKey(t, "testdata/bordeaux.guix.gnu.org.pub")
	for _, f := range []string{"testdata/ci-sed-4.4.narinfo", "testdata/ci-hello-2.10-hurd.narinfo"} {
		text := mustRead(t, f)
		if !independentVerify(t, text, ci.point.Bytes()) {
			t.Errorf("%s: the independent verifier refuses a real signature", f)
		}
		if independentVerify(t, text, bordeaux.point.Bytes()) {
			t.Errorf("%s: verified under the wrong key", f)
		}
		tampered := bytes.Replace(text, []byte("NarSize: "), []byte("NarSize: 1"), 1)
		if independentVerify(t, tampered, ci.point.Bytes()) {
			t.Errorf("%s: verified for other text", f)
		}
	}
}
