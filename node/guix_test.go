package node

import (
	"testing"
	"time"
)

// A burst of misses on one Guix connection waits missBudgetMax in all,
// however many there are; time that passes refills the budget, up to
// missBudgetMax.
func TestMissBudget(t *testing.T) {
	var b missBudget
	if w := b.take(); w != narinfoDeadline {
		t.Fatalf("a fresh connection's first lookup may wait %s, want %s", w, narinfoDeadline)
	} else {
		b.spend(w)
	}
	total := narinfoDeadline
	for range 1000 {
		w := b.take()
		total += w
		b.spend(w) // each lookup waits all it may: nobody answers
	}
	if total > missBudgetMax+100*time.Millisecond {
		t.Errorf("1,001 misses in a row waited %s, want at most about %s", total, missBudgetMax)
	}
	b.at = b.at.Add(-time.Minute) // a minute goes by
	if w := b.take(); w != narinfoDeadline || b.left != missBudgetMax {
		t.Errorf("after a minute: may wait %s with %s left, want %s with %s", w, b.left, narinfoDeadline, missBudgetMax)
	}
}
