package hbone

import (
	"io"
	"sync"

	"golang.org/x/net/http2"
)

// Receive buffers hold DATA that a stream's reader has not read yet, in
// pooled chunks: a frame's payload is read from the TLS conn straight into
// the buffer (no copy out of the framer), the buffer never grows by
// reallocation and copying, and small frames share a chunk.
const (
	smallChunk = 16 << 10
	largeChunk = 256 << 10 // the largest frame either side accepts
)

var (
	smallChunks = sync.Pool{New: func() any { b := make([]byte, smallChunk); return &b }}
	largeChunks = sync.Pool{New: func() any { b := make([]byte, largeChunk); return &b }}
)

type chunk struct {
	buf  *[]byte
	r, w int // unread bytes are (*buf)[r:w]
}

func getChunk(n int) chunk {
	if n <= smallChunk {
		return chunk{buf: smallChunks.Get().(*[]byte)}
	}
	return chunk{buf: largeChunks.Get().(*[]byte)}
}

func putChunk(c chunk) {
	if len(*c.buf) == smallChunk {
		smallChunks.Put(c.buf)
	} else {
		largeChunks.Put(c.buf)
	}
}

// recvBuffer is a FIFO of bytes. It is guarded by its owner's mutex,
// except that the slice returned by reserve is filled without it: the
// connection's read loop is the only writer.
type recvBuffer struct {
	chunks  []chunk
	n       int  // bytes buffered
	pending bool // a reserved slice is being filled
}

// Len is the number of unread bytes.
func (b *recvBuffer) Len() int { return b.n }

// reserve returns a slice of n bytes (n <= largeChunk) to fill, then
// commit or abandon.
func (b *recvBuffer) reserve(n int) []byte {
	b.pending = true
	if k := len(b.chunks); k > 0 {
		t := &b.chunks[k-1]
		if len(*t.buf)-t.w >= n {
			return (*t.buf)[t.w : t.w+n]
		}
	}
	c := getChunk(n)
	b.chunks = append(b.chunks, c)
	return (*c.buf)[:n]
}

// commit makes the n reserved bytes readable.
func (b *recvBuffer) commit(n int) {
	b.pending = false
	b.chunks[len(b.chunks)-1].w += n
	b.n += n
}

// abandon gives up a reservation.
func (b *recvBuffer) abandon() {
	b.pending = false
	b.trimTail()
}

// trimTail releases an empty last chunk that nobody is filling.
func (b *recvBuffer) trimTail() {
	if k := len(b.chunks); k > 0 && !b.pending && b.chunks[k-1].w == b.chunks[k-1].r {
		putChunk(b.chunks[k-1])
		b.chunks[k-1] = chunk{}
		b.chunks = b.chunks[:k-1]
	}
}

// Read copies unread bytes into p.
func (b *recvBuffer) Read(p []byte) int {
	n := 0
	for len(p) > 0 && b.n > 0 {
		c := &b.chunks[0]
		k := copy(p, (*c.buf)[c.r:c.w])
		c.r += k
		b.n -= k
		n += k
		p = p[k:]
		if c.r == c.w {
			if len(b.chunks) == 1 && b.pending {
				break // being filled: keep it
			}
			b.popHead()
		}
	}
	return n
}

// popHead releases the first chunk, keeping the list's capacity.
func (b *recvBuffer) popHead() {
	putChunk(b.chunks[0])
	k := copy(b.chunks, b.chunks[1:])
	b.chunks[k] = chunk{}
	b.chunks = b.chunks[:k]
}

// skip drops the first n unread bytes.
func (b *recvBuffer) skip(n int) {
	for n > 0 && b.n > 0 {
		c := &b.chunks[0]
		k := min(n, c.w-c.r)
		c.r += k
		b.n -= k
		n -= k
		if c.r == c.w {
			if len(b.chunks) == 1 && b.pending {
				break
			}
			b.popHead()
		}
	}
}

// free drops the unread bytes and releases the chunks, except one being
// filled (abandon or commit, then free again, releases it).
func (b *recvBuffer) free() {
	keep := 0
	if b.pending {
		keep = 1
	}
	for len(b.chunks) > keep {
		b.popHead()
	}
	if keep == 1 {
		t := &b.chunks[0]
		t.r = t.w
	}
	b.n = 0
}

// readFrameOrData reads the next frame, except the payload of an unpadded
// DATA frame on a stream: then it returns only the header (data is true),
// and the caller reads the payload from the conn, straight into a
// recvBuffer, or discards it.
func readFrameOrData(fr *http2.Framer) (f http2.Frame, fh http2.FrameHeader, data bool, err error) {
	fh, err = fr.ReadFrameHeader()
	if err != nil {
		return nil, fh, false, err
	}
	if fh.Type == http2.FrameData && fh.StreamID != 0 && !fh.Flags.Has(http2.FlagDataPadded) {
		return nil, fh, true, nil
	}
	f, err = fr.ReadFrameForHeader(fh)
	return f, fh, false, err
}

// discard reads and drops n bytes of a frame payload.
func discard(r io.Reader, n int64) error {
	if n == 0 {
		return nil
	}
	c := getChunk(int(n))
	_, err := io.ReadFull(r, (*c.buf)[:n])
	putChunk(c)
	return err
}
