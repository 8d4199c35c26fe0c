package image

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Progress is one report of a long step. Total is 0 when unknown.
type Progress struct {
	Stage   string `json:"stage"`
	Current int64  `json:"current,omitempty"`
	Total   int64  `json:"total,omitempty"`
	Unit    string `json:"unit,omitempty"` // "bytes" or ""
	Message string `json:"message,omitempty"`
}

// ProgressFunc receives progress reports; it must be quick. The Manager serialises calls
// (layers download concurrently), so it need not be safe for concurrent use.
type ProgressFunc func(Progress)

// serialised wraps f so concurrent reports reach it one at a time.
func serialised(f ProgressFunc) ProgressFunc {
	if f == nil {
		return nil
	}
	var mu sync.Mutex
	return func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		f(p)
	}
}

func (f ProgressFunc) report(p Progress) {
	if f != nil {
		f(p)
	}
}

// counter counts bytes flowing through it and reports at most every interval.
type counter struct {
	r        io.Reader
	n        *atomic.Int64
	tick     func()
	last     time.Time
	interval time.Duration
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if c.tick != nil && (time.Since(c.last) >= c.interval || err != nil) {
		c.last = time.Now()
		c.tick()
	}
	return n, err
}

func countingReader(r io.Reader, n *atomic.Int64, tick func()) io.Reader {
	return &counter{r: r, n: n, tick: tick, interval: 200 * time.Millisecond}
}
