package hbone

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"runtime"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frameWriter is the write half of an HTTP/2 connection, shared by the
// server (serverConn) and the client (clientConn): frames are written into a
// buffered writer in front of the TLS conn under wmu and flushed at the end
// of each batch, so that the frames of one operation leave in one TLS write.
type frameWriter struct {
	fr *http2.Framer // Write* only under wmu; ReadFrame by the owner's read loop

	wmu      sync.Mutex
	bw       *bufio.Writer
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	dataHdr  [9]byte
	writeErr error
	// wakeAfterDirectWrite: the process has more than one P (see
	// serverConn.processData).
	wakeAfterDirectWrite bool
	// onWriteError is called (in its own goroutine) once a write fails: the
	// stream of frames is broken and the connection must end.
	onWriteError func(error)
}

func (w *frameWriter) init(c net.Conn, maxReadFrame uint32, onWriteError func(error)) {
	w.bw = bufio.NewWriterSize(c, writeBufferSize)
	w.fr = http2.NewFramer(w.bw, c)
	w.fr.SetReuseFrames()
	w.fr.SetMaxReadFrameSize(maxReadFrame)
	w.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	w.fr.MaxHeaderListSize = maxHeaderListSize
	w.henc = hpack.NewEncoder(&w.hbuf)
	w.onWriteError = onWriteError
	w.wakeAfterDirectWrite = runtime.GOMAXPROCS(0) > 1
}

// writeFrames runs fn with the write lock held, then flushes.
func (w *frameWriter) writeFrames(fn func(*http2.Framer) error) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return w.writeLocked(fn)
}

// writeLocked runs fn and flushes; wmu is held.
func (w *frameWriter) writeLocked(fn func(*http2.Framer) error) error {
	if w.writeErr != nil {
		return w.writeErr
	}
	err := fn(w.fr)
	if err == nil {
		err = w.bw.Flush()
	}
	if err != nil {
		w.writeErr = fmt.Errorf("hbone: write: %w", err)
		go w.onWriteError(w.writeErr)
		return w.writeErr
	}
	return nil
}

// writeDataLocked buffers one DATA frame without copying p into the
// framer's buffer; wmu is held and flow control has granted len(p).
func (w *frameWriter) writeDataLocked(id uint32, endStream bool, p []byte) error {
	h := w.dataHdr[:]
	n := len(p)
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if endStream {
		h[4] = byte(http2.FlagDataEndStream)
	}
	h[5], h[6], h[7], h[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	if _, err := w.bw.Write(h); err != nil {
		return err
	}
	_, err := w.bw.Write(p)
	return err
}

// inflow is one receive window (a stream's or a connection's): how many
// bytes the peer may still send, and how many the reader has consumed
// without returning them with WINDOW_UPDATE yet.
type inflow struct {
	window  int64
	unacked int64
}

// take accounts for n received bytes; false means the peer overran the window.
func (f *inflow) take(n int64) bool {
	if n > f.window {
		return false
	}
	f.window -= n
	return true
}

// consume accounts for n bytes the reader consumed and returns the
// WINDOW_UPDATE increment to send now: zero until threshold bytes have
// accumulated, so that updates go out in batches.
func (f *inflow) consume(n, threshold int64) int64 {
	f.unacked += n
	if f.unacked == 0 || f.unacked < threshold {
		return 0
	}
	k := f.unacked
	f.unacked = 0
	f.window += k
	return k
}

// writeWindowUpdates writes the WINDOW_UPDATE frames for a stream and for
// the connection whose increments are not zero.
func writeWindowUpdates(fr *http2.Framer, streamID uint32, streamIncr, connIncr int64) error {
	if streamIncr > 0 {
		if err := fr.WriteWindowUpdate(streamID, uint32(streamIncr)); err != nil {
			return err
		}
	}
	if connIncr > 0 {
		return fr.WriteWindowUpdate(0, uint32(connIncr))
	}
	return nil
}
