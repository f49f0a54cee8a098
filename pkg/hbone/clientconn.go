package hbone

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Client-side HTTP/2 tuning. The receive windows are large so that one
// stream can keep a fast path busy; memory is bounded per stream by
// clientStreamWindow. WINDOW_UPDATEs go out in batches, once a quarter of
// a window has been read, not after every Read.
const (
	clientStreamWindow          = 2 << 20
	clientConnWindow            = 1 << 30
	clientStreamUpdateThreshold = clientStreamWindow / 4
	clientConnUpdateThreshold   = clientStreamWindow
	// defaultPeerMaxStreams is assumed until the server's SETTINGS arrive.
	defaultPeerMaxStreams = 100
	// pingTimeout is how long a health-check PING may go unanswered.
	pingTimeout = 15 * time.Second
	// lastStreamID is the largest client stream ID.
	lastStreamID = 1<<31 - 1
)

var (
	// errRefused marks a CONNECT the server did not process (REFUSED_STREAM,
	// or above the last stream ID of a GOAWAY): it may be retried.
	errRefused    = errors.New("hbone: stream refused by server")
	errUnusable   = errors.New("hbone: connection cannot take new streams")
	errPingFailed = errors.New("hbone: health check PING unanswered")
	errRetired    = errors.New("hbone: connection retired after a bulk stream")
)

// clientConn is one pooled HTTP/2 client connection: a CONNECT-only
// HTTP/2 client on the same framer and flow-control code as the server.
// Conn.Write frames DATA directly under the connection's write lock; one
// read loop dispatches frames to the streams. Lock order: Conn.wmu, then
// clientConn.wmu, then clientConn.mu.
type clientConn struct {
	frameWriter // fr.ReadFrame only in readLoop

	conn     net.Conn
	local    net.Addr
	peer     identity.SPIFFEID
	idle     time.Duration // 0: never close for idleness
	logger   *slog.Logger
	readDone chan struct{} // closed when readLoop returns
	frames   atomic.Uint64 // frames read, for health checks

	mu            sync.Mutex
	streams       map[uint32]*Conn // open in at least one direction
	nextID        uint32
	reserved      int    // stream slots promised to Dials not yet sent
	maxStreams    uint32 // peer's SETTINGS_MAX_CONCURRENT_STREAMS
	sendWindow    int64  // connection-level window of the peer
	initialWindow int64  // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame  int    // peer's SETTINGS_MAX_FRAME_SIZE
	inflow        inflow // connection-level receive window
	flowCh        chan struct{}
	goingAway     bool
	// bulkBytes: a stream that carries this many bytes in one direction
	// retires the connection (0: never). retired: it takes no new stream
	// and closes once its last one ends.
	bulkBytes int64
	retired   bool
	closed    bool
	closeErr  error
	idleTimer *time.Timer
}

// newClientConn starts HTTP/2 on an authenticated TLS conn: it sends the
// preface and SETTINGS and starts the read loop.
func newClientConn(c net.Conn, local net.Addr, peer identity.SPIFFEID, idle, healthEvery time.Duration, bulkBytes int64, logger *slog.Logger) (*clientConn, error) {
	cc := &clientConn{
		conn:          c,
		local:         local,
		peer:          peer,
		idle:          idle,
		bulkBytes:     bulkBytes,
		logger:        logger,
		readDone:      make(chan struct{}),
		streams:       make(map[uint32]*Conn),
		nextID:        1,
		maxStreams:    defaultPeerMaxStreams,
		sendWindow:    65535,
		initialWindow: 65535,
		peerMaxFrame:  16384,
		inflow:        inflow{window: clientConnWindow},
	}
	cc.frameWriter.init(c, clientMaxFrameSize, cc.close)
	err := cc.writeFrames(func(fr *http2.Framer) error {
		if _, err := cc.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		if err := fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: clientStreamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: clientMaxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
		); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, clientConnWindow-65535)
	})
	if err != nil {
		cc.close(err)
		return nil, err
	}
	go cc.readLoop()
	if healthEvery > 0 {
		go cc.healthLoop(healthEvery)
	}
	return cc, nil
}

// reserve takes a stream slot for a Dial, unless the connection is
// saturated or can open no new stream.
func (cc *clientConn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.goingAway || cc.retired || cc.nextID+2*uint32(cc.reserved) > lastStreamID ||
		uint32(len(cc.streams)+cc.reserved) >= cc.maxStreams {
		return false
	}
	cc.reserved++
	if cc.idleTimer != nil {
		cc.idleTimer.Stop()
	}
	return true
}

// state reports whether the connection is closed, and whether it takes no
// new streams (closed, draining after GOAWAY, retired, or out of stream
// IDs).
func (cc *clientConn) state() (closed, closing bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closed, cc.closed || cc.goingAway || cc.retired || cc.nextID > lastStreamID
}

// countLocked retires the connection once a stream's count of bytes in one
// direction (n, after adding the latest) reaches bulkBytes: while a bulk
// transfer runs, new streams on its connection would queue behind its
// bytes in the TCP send buffer (BenchmarkRoundTripDuringBulk), and after
// it the connection keeps the buffers and congestion state the kernel grew
// for it (docs/reference/ztunnel.md, "Latency after a bulk transfer").
// New streams go to another connection; this one closes when its last
// stream ends.
func (cc *clientConn) countLocked(n int64) {
	if cc.bulkBytes <= 0 || n < cc.bulkBytes || cc.retired {
		return
	}
	cc.retired = true
	cc.logger.Debug("hbone: connection retired after a bulk stream", "peer", cc.peer.String(), "local", cc.local.String(), "bytes", n)
}

func (cc *clientConn) isIdle() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.streams)+cc.reserved == 0
}

// checkHeader refuses request headers that cannot be sent.
func checkHeader(h http.Header) error {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("hbone: invalid header name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("hbone: invalid value for header %q", k)
			}
		}
	}
	return nil
}

// skipHeader reports whether a request header must not go on the wire:
// connection-specific ones (RFC 9113 section 8.2.2) and those HTTP/2
// carries otherwise.
func skipHeader(name string, vv []string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "content-length":
		return true
	case "te":
		return len(vv) != 1 || vv[0] != "trailers"
	}
	return false
}

// openStream sends the CONNECT HEADERS for c on a reserved slot, followed,
// in the same write, by as much of early as flow control allows at once
// (DATA frames); it returns how much of early it sent.
func (cc *clientConn) openStream(c *Conn, authority string, header http.Header, early []byte) (int, error) {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.mu.Lock()
	cc.reserved--
	if cc.closed || cc.goingAway || cc.nextID > lastStreamID {
		cc.maybeIdleLocked()
		cc.mu.Unlock()
		return 0, errUnusable
	}
	c.id = cc.nextID
	cc.nextID += 2
	c.sendWindow = cc.initialWindow
	maxFrame := cc.peerMaxFrame
	cc.streams[c.id] = c
	early = early[:c.grantLocked(len(early))]
	cc.mu.Unlock()

	cc.hbuf.Reset()
	_ = cc.henc.WriteField(hpack.HeaderField{Name: ":method", Value: http.MethodConnect})
	_ = cc.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	for k, vv := range header {
		name := strings.ToLower(k)
		if skipHeader(name, vv) {
			continue
		}
		for _, v := range vv {
			_ = cc.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
	err := cc.writeLocked(func(fr *http2.Framer) error {
		block := cc.hbuf.Bytes()
		first := block[:min(len(block), maxFrame)]
		if err := fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: c.id, BlockFragment: first, EndHeaders: len(first) == len(block),
		}); err != nil {
			return err
		}
		for rest := block[len(first):]; len(rest) > 0; {
			k := min(len(rest), maxFrame)
			if err := fr.WriteContinuation(c.id, k == len(rest), rest[:k]); err != nil {
				return err
			}
			rest = rest[k:]
		}
		for p := early; len(p) > 0; {
			k := min(len(p), maxFrame)
			if err := cc.writeDataLocked(c.id, false, p[:k]); err != nil {
				return err
			}
			p = p[k:]
		}
		return nil
	})
	return len(early), err
}

func (cc *clientConn) readLoop() {
	defer close(cc.readDone)
	var err error
	for {
		var f http2.Frame
		var fh http2.FrameHeader
		var isData bool
		f, fh, isData, err = readFrameOrData(cc.fr)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.frames.Add(1)
				cc.processStreamError(se)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				err = cc.connError(http2.ErrCode(ce), "framing error")
			} else if errors.Is(err, http2.ErrFrameTooLarge) {
				err = cc.connError(http2.ErrCodeFrameSize, "frame too large")
			}
			break
		}
		cc.frames.Add(1)
		if isData {
			err = cc.processData(fh, nil)
		} else {
			err = cc.processFrame(f)
		}
		if err != nil {
			break
		}
	}
	cc.close(err)
}

// connError sends GOAWAY with code and returns an error that ends the
// connection.
func (cc *clientConn) connError(code http2.ErrCode, reason string) error {
	_ = cc.writeFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(0, code, []byte(reason)) })
	cc.logger.Debug("hbone: client connection error", "peer", cc.peer.String(), "code", code.String(), "reason", reason)
	return fmt.Errorf("hbone: connection error %v: %s", code, reason)
}

func (cc *clientConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return cc.processData(f.FrameHeader, f)
	case *http2.MetaHeadersFrame:
		return cc.processHeaders(f)
	case *http2.SettingsFrame:
		return cc.processSettings(f)
	case *http2.WindowUpdateFrame:
		return cc.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return cc.processRSTStream(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return cc.writeFrames(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		return cc.processGoAway(f)
	case *http2.PushPromiseFrame:
		return cc.connError(http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled")
	default:
		// PRIORITY and unknown frame types are ignored.
		return nil
	}
}

func (cc *clientConn) processStreamError(se http2.StreamError) {
	cc.mu.Lock()
	c := cc.streams[se.StreamID]
	cc.mu.Unlock()
	if c != nil {
		cc.resetStream(c, se.Code, fmt.Errorf("hbone: stream error: %v", se), false)
		return
	}
	_ = cc.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(se.StreamID, se.Code) })
}

// processData handles a DATA frame: f is the frame read by the framer, or
// nil when its payload is still to be read from the conn (unpadded DATA,
// read straight into the stream's buffer).
func (cc *clientConn) processData(fh http2.FrameHeader, f *http2.DataFrame) error {
	n := int64(fh.Length)
	cc.mu.Lock()
	if !cc.inflow.take(n) {
		cc.mu.Unlock()
		return cc.connError(http2.ErrCodeFlowControl, "connection window exceeded")
	}
	c := cc.streams[fh.StreamID]
	if c == nil || c.remoteClosed || c.status == 0 || !c.inflow.take(n) {
		// A stream we reset, or a misbehaving one: the bytes go back to the
		// connection window.
		incr := cc.inflow.consume(n, clientConnUpdateThreshold)
		idle := c == nil && fh.StreamID >= cc.nextID
		cc.mu.Unlock()
		if f == nil {
			if err := discard(cc.conn, n); err != nil {
				return err
			}
		}
		switch {
		case idle:
			return cc.connError(http2.ErrCodeProtocol, "DATA on idle stream")
		case c != nil && c.remoteClosed:
			cc.resetStream(c, http2.ErrCodeStreamClosed, errors.New("hbone: DATA after END_STREAM"), false)
		case c != nil && c.status == 0:
			cc.resetStream(c, http2.ErrCodeProtocol, errors.New("hbone: DATA before response HEADERS"), false)
		case c != nil:
			cc.resetStream(c, http2.ErrCodeFlowControl, errors.New("hbone: stream window exceeded"), false)
		}
		if incr > 0 {
			return cc.writeFrames(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(incr)) })
		}
		return nil
	}
	c.received += n
	cc.countLocked(c.received)
	if f != nil {
		data := f.Data()
		// Padding is consumed at once.
		pad := n - int64(len(data))
		c.inflow.unacked += pad
		cc.inflow.unacked += pad
		if len(data) > 0 {
			copy(c.recv.reserve(len(data)), data)
			c.recv.commit(len(data))
		}
	} else if n > 0 {
		dst := c.recv.reserve(int(n))
		// The stream's reader waits for data to copy to its sink: write
		// the payload there directly, sparing the hand-off to the reader
		// (as the server does). The reserved chunk stays ours until commit
		// or abandon.
		sink := c.sink
		if !c.sinkWaiting || c.recv.Len() > 0 || n > maxDirectWrite {
			sink = nil
		}
		cc.mu.Unlock()
		_, err := io.ReadFull(cc.conn, dst)
		written := 0
		if err == nil && sink != nil {
			written = sink.tryWrite(dst)
		}
		cc.mu.Lock()
		if err != nil || c.localAbort {
			c.recv.abandon()
			if c.localAbort {
				c.recv.free()
				cc.inflow.unacked += n
			}
			cc.mu.Unlock()
			return err
		}
		c.recv.commit(int(n))
		if written > 0 {
			c.recv.skip(written)
			streamIncr := c.inflow.consume(int64(written), clientStreamUpdateThreshold)
			connIncr := cc.inflow.consume(int64(written), clientConnUpdateThreshold)
			if streamIncr > 0 || connIncr > 0 {
				cc.mu.Unlock()
				if err := cc.writeFrames(func(fr *http2.Framer) error { return writeWindowUpdates(fr, c.id, streamIncr, connIncr) }); err != nil {
					return err
				}
				cc.mu.Lock()
			}
			if written == int(n) && !fh.Flags.Has(http2.FlagDataEndStream) {
				// Nothing for the reader to do; see serverConn.processData
				// for the wake-up.
				cc.mu.Unlock()
				if cc.wakeAfterDirectWrite {
					c.wakeReader()
				}
				return nil
			}
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.remoteClosed = true
		cc.maybeFinishLocked(c)
	}
	cc.mu.Unlock()
	c.wakeReader()
	return nil
}

func (cc *clientConn) processHeaders(f *http2.MetaHeadersFrame) error {
	cc.mu.Lock()
	c := cc.streams[f.StreamID]
	if c == nil {
		idle := f.StreamID >= cc.nextID
		cc.mu.Unlock()
		if idle {
			return cc.connError(http2.ErrCodeProtocol, "HEADERS on idle stream")
		}
		return nil // a stream we reset
	}
	if c.status != 0 || c.remoteClosed {
		// Trailers: allowed only to end the stream; their fields are dropped.
		if !f.StreamEnded() || c.remoteClosed {
			cc.mu.Unlock()
			cc.resetStream(c, http2.ErrCodeProtocol, errors.New("hbone: unexpected HEADERS"), false)
			return nil
		}
		c.remoteClosed = true
		cc.maybeFinishLocked(c)
		cc.mu.Unlock()
		c.wakeReader()
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 || f.Truncated {
		cc.mu.Unlock()
		cc.resetStream(c, http2.ErrCodeProtocol, errors.New("hbone: malformed response HEADERS"), false)
		return nil
	}
	if status < 200 {
		// Informational (1xx): the final response follows.
		cc.mu.Unlock()
		return nil
	}
	header := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		header.Add(hf.Name, hf.Value)
	}
	c.status, c.header = status, header
	if f.StreamEnded() {
		c.remoteClosed = true
		cc.maybeFinishLocked(c)
	}
	cc.mu.Unlock()
	close(c.respCh)
	c.markAnswered()
	c.wakeReader()
	return nil
}

func (cc *clientConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			cc.mu.Lock()
			delta := int64(s.Val) - cc.initialWindow
			cc.initialWindow = int64(s.Val)
			for _, c := range cc.streams {
				c.sendWindow += delta
				if c.sendWindow > math.MaxInt32 {
					cc.mu.Unlock()
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			cc.wakeWritersLocked()
			cc.mu.Unlock()
		case http2.SettingMaxFrameSize:
			cc.mu.Lock()
			cc.peerMaxFrame = int(s.Val)
			cc.mu.Unlock()
		case http2.SettingMaxConcurrentStreams:
			cc.mu.Lock()
			cc.maxStreams = s.Val
			cc.mu.Unlock()
		case http2.SettingHeaderTableSize:
			cc.wmu.Lock()
			cc.henc.SetMaxDynamicTableSizeLimit(s.Val)
			cc.wmu.Unlock()
		}
		return nil
	})
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return cc.connError(http2.ErrCode(ce), "invalid SETTINGS")
		}
		return cc.connError(http2.ErrCodeProtocol, "invalid SETTINGS")
	}
	return cc.writeFrames(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (cc *clientConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	if f.StreamID == 0 {
		cc.sendWindow += int64(f.Increment)
		if cc.sendWindow > math.MaxInt32 {
			cc.mu.Unlock()
			return cc.connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		cc.wakeWritersLocked()
		cc.mu.Unlock()
		return nil
	}
	c := cc.streams[f.StreamID]
	if c == nil {
		cc.mu.Unlock()
		return nil
	}
	c.sendWindow += int64(f.Increment)
	overflow := c.sendWindow > math.MaxInt32
	cc.wakeWritersLocked()
	cc.mu.Unlock()
	if overflow {
		cc.resetStream(c, http2.ErrCodeFlowControl, errors.New("hbone: stream window overflow"), false)
	}
	return nil
}

func (cc *clientConn) processRSTStream(f *http2.RSTStreamFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	c := cc.streams[f.StreamID]
	if c == nil {
		return nil
	}
	var err error = &StreamResetError{Code: uint32(f.ErrCode), Remote: true}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		c.retry = true
		err = fmt.Errorf("%w: %w", errRefused, err)
	}
	cc.abortStreamLocked(c, err, false)
	return nil
}

func (cc *clientConn) processGoAway(f *http2.GoAwayFrame) error {
	cc.mu.Lock()
	cc.goingAway = true
	for id, c := range cc.streams {
		if id > f.LastStreamID {
			c.retry = true
			cc.abortStreamLocked(c, fmt.Errorf("%w: GOAWAY (last stream %d)", errRefused, f.LastStreamID), false)
		}
	}
	if f.ErrCode != http2.ErrCodeNo {
		cc.logger.Debug("hbone: GOAWAY from server", "peer", cc.peer.String(), "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	cc.maybeIdleLocked()
	cc.mu.Unlock()
	return nil
}

// resetStream sends RST_STREAM for c, unless it is over already, and fails
// its pending operations with err.
func (cc *clientConn) resetStream(c *Conn, code http2.ErrCode, err error, local bool) {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.mu.Lock()
	if c.reset || c.removed {
		if local {
			cc.abortStreamLocked(c, err, true)
		}
		cc.mu.Unlock()
		return
	}
	cc.abortStreamLocked(c, err, local)
	cc.mu.Unlock()
	_ = cc.writeLocked(func(fr *http2.Framer) error { return fr.WriteRSTStream(c.id, code) })
}

// abortStreamLocked marks c reset: writes fail with err, and so do reads,
// after the bytes already received unless the abort is local.
func (cc *clientConn) abortStreamLocked(c *Conn, err error, local bool) {
	if local && !c.localAbort {
		c.localAbort = true
		// Unread bytes go back to the connection window.
		cc.inflow.unacked += int64(c.recv.Len()) + c.inflow.unacked
		c.inflow.unacked = 0
		c.recv.free()
	}
	if c.reset {
		return
	}
	c.reset = true
	c.err = err
	close(c.abortCh)
	c.markAnswered()
	cc.maybeFinishLocked(c)
}

// maybeFinishLocked forgets a stream that is over in both directions.
func (cc *clientConn) maybeFinishLocked(c *Conn) {
	if c.removed || !c.reset && !(c.localClosed && c.remoteClosed) {
		return
	}
	c.removed = true
	delete(cc.streams, c.id)
	cc.maybeIdleLocked()
}

// maybeIdleLocked closes a drained connection after GOAWAY, or arms the
// idle timer of one without streams.
func (cc *clientConn) maybeIdleLocked() {
	if cc.closed || len(cc.streams)+cc.reserved > 0 {
		return
	}
	if cc.goingAway {
		go cc.close(errGoAwayDone)
		return
	}
	if cc.retired {
		go cc.close(errRetired)
		return
	}
	if cc.idle <= 0 {
		return
	}
	if cc.idleTimer == nil {
		cc.idleTimer = time.AfterFunc(cc.idle, cc.onIdle)
		return
	}
	cc.idleTimer.Reset(cc.idle)
}

func (cc *clientConn) onIdle() {
	cc.mu.Lock()
	idle := !cc.closed && len(cc.streams)+cc.reserved == 0
	cc.mu.Unlock()
	if idle {
		cc.close(errIdleTimeout)
	}
}

func (cc *clientConn) wakeWritersLocked() {
	if cc.flowCh != nil {
		close(cc.flowCh)
		cc.flowCh = nil
	}
}

// healthLoop sends a PING when nothing has been read for an interval and
// closes the connection if the answer does not come within pingTimeout.
func (cc *clientConn) healthLoop(every time.Duration) {
	t := time.NewTimer(every)
	defer t.Stop()
	last := cc.frames.Load()
	for {
		select {
		case <-cc.readDone:
			return
		case <-t.C:
		}
		if n := cc.frames.Load(); n != last {
			last = n
			t.Reset(every)
			continue
		}
		_ = cc.writeFrames(func(fr *http2.Framer) error { return fr.WritePing(false, [8]byte{'h', 'b', 'o', 'n', 'e'}) })
		t.Reset(pingTimeout)
		select {
		case <-cc.readDone:
			return
		case <-t.C:
		}
		if cc.frames.Load() == last {
			cc.close(errPingFailed)
			return
		}
		last = cc.frames.Load()
		t.Reset(every)
	}
}

// close ends the connection and aborts every stream with err.
func (cc *clientConn) close(err error) {
	if err == nil || errors.Is(err, io.EOF) {
		err = errConnClosed
	}
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return
	}
	cc.closed = true
	cc.closeErr = err
	if cc.idleTimer != nil {
		cc.idleTimer.Stop()
	}
	for _, c := range cc.streams {
		cc.abortStreamLocked(c, fmt.Errorf("%w: %w", errConnClosed, err), false)
	}
	cc.wakeWritersLocked()
	cc.mu.Unlock()
	_ = cc.conn.Close()
}
