package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// readFromRecorder is a ResponseWriter that takes a body by ReadFrom, as
// the binary cache's server does (sendfile); it counts the calls.
type readFromRecorder struct {
	*httptest.ResponseRecorder
	readFroms int
}

func (r *readFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.readFroms++
	return io.Copy(r.ResponseRecorder, src)
}

// instrument counts a request by kind and status, and leaves the
// ResponseWriter's ReadFrom to the handler.
func TestInstrumentKeepsReadFrom(t *testing.T) {
	m := &metrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests"}, []string{"kind", "code"})}
	h := m.instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusPartialContent)
		rf, ok := w.(io.ReaderFrom)
		if !ok {
			t.Errorf("the handler's ResponseWriter %T has no ReadFrom", w)
			return
		}
		rf.ReadFrom(strings.NewReader("some NAR bytes"))
	}))
	rec := &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/nar/x.nar", nil))
	if rec.readFroms != 1 || rec.Body.String() != "some NAR bytes" {
		t.Errorf("%d ReadFrom calls reached the ResponseWriter, body %q", rec.readFroms, rec.Body.String())
	}
	var counted dto.Metric
	if err := m.requests.WithLabelValues("nar", "206").Write(&counted); err != nil {
		t.Fatal(err)
	}
	if got := counted.GetCounter().GetValue(); got != 1 {
		t.Errorf("nar 206 counted %v times, want 1", got)
	}
}
