package revert

import (
	"errors"
	"reflect"
	"sync"
	"testing"
)

func TestFailRunsNewestFirst(t *testing.T) {
	var got []int
	r := New()
	for i := 1; i <= 3; i++ {
		r.Add(func() { got = append(got, i) })
	}
	r.Fail()
	r.Fail() // a second Fail runs nothing
	if !reflect.DeepEqual(got, []int{3, 2, 1}) {
		t.Fatalf("undo order %v, want [3 2 1]", got)
	}
}

func TestSuccessKeepsTheWork(t *testing.T) {
	ran := false
	func() {
		r := New()
		defer r.Fail()
		r.Add(func() { ran = true })
		r.Success()
	}()
	if ran {
		t.Fatal("an undo ran after Success")
	}
}

func TestDeferredFailOnError(t *testing.T) {
	var undone []string
	step := func(fail bool) (err error) {
		r := New()
		defer r.Fail()
		r.Add(func() { undone = append(undone, "a") })
		if fail {
			return errors.New("failed")
		}
		r.Add(func() { undone = append(undone, "b") })
		r.Success()
		return nil
	}
	if err := step(true); err == nil || !reflect.DeepEqual(undone, []string{"a"}) {
		t.Fatalf("failed step: err %v, undone %v", err, undone)
	}
	undone = nil
	if err := step(false); err != nil || undone != nil {
		t.Fatalf("good step: err %v, undone %v", err, undone)
	}
}

func TestConcurrentAdd(t *testing.T) {
	r := New()
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.Add(func() { mu.Lock(); n++; mu.Unlock() }) }()
	}
	wg.Wait()
	r.Fail()
	if n != 50 {
		t.Fatalf("%d undos ran, want 50", n)
	}
}
