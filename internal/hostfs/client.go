package hostfs

import (
	"errors"
	"io"
	"sync"
	"syscall"
)

// Client sends a guest's requests to Serve over conn. It is safe for concurrent use; once
// conn fails every call returns ENOTCONN.
type Client struct {
	conn io.ReadWriteCloser

	writeMu sync.Mutex

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan reply
	err     error
	done    chan struct{}
}

type reply struct {
	resp Response
	data []byte
}

// NewClient starts reading answers from conn.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{conn: conn, pending: map[uint64]chan reply{}, done: make(chan struct{})}
	go c.readLoop()
	return c
}

// Done is closed when the connection to the host has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) readLoop() {
	var err error
	for {
		var resp Response
		var data []byte
		if data, err = readFrame(c.conn, &resp); err != nil {
			break
		}
		c.mu.Lock()
		ch := c.pending[resp.ID]
		delete(c.pending, resp.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- reply{resp, data}
		}
	}
	_ = c.conn.Close()
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// Call sends req (its ID is assigned here) with data and waits for the answer; a non-zero
// errno comes back as a syscall.Errno.
func (c *Client) Call(req Request, data []byte) (*Response, []byte, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil || isClosed(c.done) {
		c.mu.Unlock()
		return nil, nil, syscall.ENOTCONN
	}
	c.next++
	req.ID = c.next
	c.pending[req.ID] = ch
	c.mu.Unlock()
	c.writeMu.Lock()
	err := writeFrame(c.conn, req, data)
	c.writeMu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
		if errors.Is(err, errFrameTooLarge) {
			return nil, nil, syscall.EINVAL
		}
		_ = c.conn.Close()
		return nil, nil, syscall.ENOTCONN
	}
	r, ok := <-ch
	if !ok {
		return nil, nil, syscall.ENOTCONN
	}
	if r.resp.Errno != 0 {
		return &r.resp, nil, syscall.Errno(r.resp.Errno)
	}
	return &r.resp, r.data, nil
}

// Mounted tells the host the mount is up (err nil) or why it failed.
func (c *Client) Mounted(err error) error {
	req := Request{Op: OpMounted}
	if err != nil {
		req.Target = err.Error()
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return writeFrame(c.conn, req, nil)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
