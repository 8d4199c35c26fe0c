package kvm

import (
	"context"
	"testing"
)

func TestTry(t *testing.T) {
	r := Probe(context.Background(), "")
	t.Logf("%+v", r)
	for _, c := range r.Checks {
		t.Logf("%+v", c)
	}
}
