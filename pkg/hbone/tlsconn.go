package hbone

import (
	"crypto/tls"
	"net"
	"sync"
)

// crypto/tls writes each record (at most 16 KiB) with its own write system
// call, and reads about one record per read call; at HBONE's rates the
// system calls cost more than AES-GCM. batchConn sits under the TLS conn and
// turns the records of one TLS Write into a few large writes. (A read buffer
// under TLS made no measurable difference and would cost memory per conn.)
const (
	// batchSize is the most a batch holds before it is written out: eight
	// full records per write system call. Batch buffers are pooled and held
	// only during a Write.
	batchSize = 128 << 10
)

var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, batchSize+1024); return &b }}

// batchConn is the TCP conn under a TLS conn. Its reads and writes use
// raw system calls (rawio_linux.go) when it is a *net.TCPConn.
type batchConn struct {
	net.Conn
	r *rawReader // nil: c.Conn.Read
	w *rawWriter // nil: c.Conn.Write

	mu       sync.Mutex
	batching bool
	buf      *[]byte // pooled while batching
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, r: newRawReader(c), w: newRawWriter(c)}
}

func (c *batchConn) Read(p []byte) (int, error) {
	if c.r != nil {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.writeRaw(p)
	}
	b := *c.buf
	if len(b)+len(p) > batchSize && len(b) > 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		b = *c.buf
	}
	if len(p) >= batchSize {
		return c.writeRaw(p)
	}
	*c.buf = append(b, p...)
	return len(p), nil
}

func (c *batchConn) startBatch() {
	c.mu.Lock()
	c.batching = true
	c.buf = batchBuffers.Get().(*[]byte)
	c.mu.Unlock()
}

func (c *batchConn) endBatch() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.batching = false
	*c.buf = (*c.buf)[:0]
	batchBuffers.Put(c.buf)
	c.buf = nil
	return err
}

func (c *batchConn) flushLocked() error {
	b := *c.buf
	*c.buf = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := c.writeRaw(b)
	return err
}

func (c *batchConn) writeRaw(p []byte) (int, error) {
	if c.w != nil {
		return c.w.Write(p)
	}
	return c.Conn.Write(p)
}

// batchedTLS is a TLS conn over a batchConn whose Writes are batched. It
// keeps *tls.Conn's methods (ConnectionState, HandshakeContext, ...).
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
	wmu sync.Mutex
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.raw.startBatch()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.endBatch(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
}

func tlsServer(c net.Conn, cfg *tls.Config) *batchedTLS {
	raw := newBatchConn(c)
	return &batchedTLS{Conn: tls.Server(raw, cfg), raw: raw}
}

func tlsClient(c net.Conn, cfg *tls.Config) *batchedTLS {
	raw := newBatchConn(c)
	return &batchedTLS{Conn: tls.Client(raw, cfg), raw: raw}
}
