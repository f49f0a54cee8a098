package hbone

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Window updates are sent once a quarter of a window has been consumed.
const (
	streamUpdateThreshold = serverStreamWindow / 4
	connUpdateThreshold   = serverConnWindow / 4
)

// maxDirectWrite bounds the DATA frames the read loop writes to a sink
// itself: larger ones go through the stream's copier, so that writing them
// out overlaps with reading the next frames.
const maxDirectWrite = 16 << 10

var (
	errConnClosed  = errors.New("hbone: connection closed")
	errGoAwayDone  = errors.New("hbone: connection drained after GOAWAY")
	errIdleTimeout = errors.New("hbone: connection idle")
)

// serverConn is the HTTP/2 server side of one HBONE connection. One
// goroutine (serve) reads frames; stream goroutines write frames under wmu.
// Lock order: Stream.wmu, then serverConn.wmu, then serverConn.mu.
type serverConn struct {
	srv        *Server
	conn       net.Conn // a *tls.Conn, except in tests
	peer       identity.SPIFFEID
	peerCert   *x509.Certificate // the certificate that proved peer; nil in tests
	ctx        context.Context
	cancel     context.CancelFunc
	maxStreams uint32

	frameWriter // fr.ReadFrame only in serve

	mu            sync.Mutex
	streams       map[uint32]*Stream // open in at least one direction
	maxStreamID   uint32             // highest client stream ID seen
	live          int                // streams counted against maxStreams
	sendWindow    int64              // connection-level window of the peer
	initialWindow int64              // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame  int                // peer's SETTINGS_MAX_FRAME_SIZE
	inflow        inflow             // connection-level receive window
	flowCh        chan struct{}      // closed when send windows grow
	goingAway     bool
	closed        bool
	closeErr      error
	idleTimer     *time.Timer
}

func newServerConn(ctx context.Context, s *Server, tc net.Conn, peer identity.SPIFFEID) *serverConn {
	ctx, cancel := context.WithCancel(ctx)
	sc := &serverConn{
		srv:           s,
		conn:          tc,
		peer:          peer,
		ctx:           ctx,
		cancel:        cancel,
		maxStreams:    s.maxStreams(),
		streams:       make(map[uint32]*Stream),
		sendWindow:    65535,
		initialWindow: 65535,
		peerMaxFrame:  16384,
		inflow:        inflow{window: serverConnWindow},
	}
	sc.frameWriter.init(tc, serverMaxFrameSize, sc.close)
	return sc
}

func (sc *serverConn) log() *slog.Logger { return sc.srv.logger() }

// serve runs the read loop until the connection ends.
func (sc *serverConn) serve() error {
	stop := context.AfterFunc(sc.ctx, func() { sc.close(context.Cause(sc.ctx)) })
	defer stop()
	err := sc.readLoop()
	sc.close(err)
	if errors.Is(err, io.EOF) || errors.Is(err, errConnClosed) || errors.Is(err, ErrServerClosed) ||
		errors.Is(err, errGoAwayDone) || errors.Is(err, errIdleTimeout) {
		return nil
	}
	return err
}

func (sc *serverConn) readLoop() error {
	err := sc.writeFrames(func(fr *http2.Framer) error {
		if err := fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: serverStreamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: serverMaxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, serverConnWindow-65535)
	})
	if err != nil {
		return err
	}
	_ = sc.conn.SetReadDeadline(time.Now().Add(sc.srv.handshakeTimeout()))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(sc.conn, preface[:]); err != nil {
		return fmt.Errorf("hbone: reading client preface: %w", err)
	}
	if string(preface[:]) != http2.ClientPreface {
		return errors.New("hbone: bad client preface")
	}
	f, err := sc.fr.ReadFrame()
	if err != nil {
		return err
	}
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		return sc.connError(http2.ErrCodeProtocol, "first frame is not SETTINGS")
	}
	_ = sc.conn.SetReadDeadline(time.Time{})
	if err := sc.processFrame(f); err != nil {
		return err
	}
	sc.armIdleTimer()
	for {
		f, fh, isData, err := readFrameOrData(sc.fr)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := sc.processStreamError(se); err != nil {
					return err
				}
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return sc.connError(http2.ErrCode(ce), "framing error")
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return sc.connError(http2.ErrCodeFrameSize, "frame too large")
			}
			return err
		}
		if isData {
			err = sc.processData(fh, nil)
		} else {
			err = sc.processFrame(f)
		}
		if err != nil {
			return err
		}
	}
}

// connError sends GOAWAY with code and returns an error that ends the
// connection.
func (sc *serverConn) connError(code http2.ErrCode, reason string) error {
	sc.mu.Lock()
	last := sc.maxStreamID
	sc.goingAway = true
	sc.mu.Unlock()
	_ = sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(last, code, []byte(reason)) })
	sc.log().Debug("hbone: connection error", "peer", sc.peer.String(), "code", code.String(), "reason", reason)
	return fmt.Errorf("hbone: connection error %v: %s", code, reason)
}

func (sc *serverConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return sc.processData(f.FrameHeader, f)
	case *http2.MetaHeadersFrame:
		return sc.processHeaders(f)
	case *http2.SettingsFrame:
		return sc.processSettings(f)
	case *http2.WindowUpdateFrame:
		return sc.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return sc.processRSTStream(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return sc.writeFrames(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.GoAwayFrame:
		// The client will open no more streams; existing ones continue.
		return nil
	case *http2.PushPromiseFrame:
		return sc.connError(http2.ErrCodeProtocol, "PUSH_PROMISE from client")
	default:
		// PRIORITY, PRIORITY_UPDATE and unknown frame types are ignored.
		return nil
	}
}

// processStreamError handles a frame the framer found malformed for one
// stream. For HEADERS opening a new stream that is a malformed request: 400.
func (sc *serverConn) processStreamError(se http2.StreamError) error {
	sc.mu.Lock()
	st := sc.streams[se.StreamID]
	isNew := st == nil && se.StreamID%2 == 1 && se.StreamID > sc.maxStreamID
	if isNew {
		sc.maxStreamID = se.StreamID
	}
	sc.mu.Unlock()
	if isNew {
		return sc.writeBadRequest(se.StreamID, "malformed request headers")
	}
	if st != nil {
		return sc.resetStream(st, se.Code, fmt.Errorf("hbone: stream error: %v", se))
	}
	return sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(se.StreamID, se.Code) })
}

func (sc *serverConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			sc.mu.Lock()
			delta := int64(s.Val) - sc.initialWindow
			sc.initialWindow = int64(s.Val)
			for _, st := range sc.streams {
				st.sendWindow += delta
				if st.sendWindow > math.MaxInt32 {
					sc.mu.Unlock()
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			sc.wakeWritersLocked()
			sc.mu.Unlock()
		case http2.SettingMaxFrameSize:
			sc.mu.Lock()
			sc.peerMaxFrame = int(s.Val)
			sc.mu.Unlock()
		case http2.SettingHeaderTableSize:
			sc.wmu.Lock()
			sc.henc.SetMaxDynamicTableSizeLimit(s.Val)
			sc.wmu.Unlock()
		}
		return nil
	})
	if err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return sc.connError(http2.ErrCode(ce), "invalid SETTINGS")
		}
		return sc.connError(http2.ErrCodeProtocol, "invalid SETTINGS")
	}
	return sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (sc *serverConn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	if f.StreamID == 0 {
		sc.sendWindow += int64(f.Increment)
		if sc.sendWindow > math.MaxInt32 {
			sc.mu.Unlock()
			return sc.connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		sc.wakeWritersLocked()
		sc.mu.Unlock()
		return nil
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		idle := f.StreamID > sc.maxStreamID
		sc.mu.Unlock()
		if idle {
			return sc.connError(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream")
		}
		return nil
	}
	st.sendWindow += int64(f.Increment)
	overflow := st.sendWindow > math.MaxInt32
	sc.wakeWritersLocked()
	sc.mu.Unlock()
	if overflow {
		return sc.resetStream(st, http2.ErrCodeFlowControl, errors.New("hbone: stream window overflow"))
	}
	return nil
}

func (sc *serverConn) processRSTStream(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	st := sc.streams[f.StreamID]
	idle := st == nil && f.StreamID > sc.maxStreamID
	if st != nil {
		sc.abortStreamLocked(st, &StreamResetError{Code: uint32(f.ErrCode), Remote: true})
	}
	sc.mu.Unlock()
	if idle {
		return sc.connError(http2.ErrCodeProtocol, "RST_STREAM on idle stream")
	}
	return sc.flushConnCredit(false)
}

// processData handles a DATA frame: f is the frame read by the framer, or
// nil when its payload is still to be read from the conn (unpadded DATA,
// read straight into the stream's buffer).
func (sc *serverConn) processData(fh http2.FrameHeader, f *http2.DataFrame) error {
	n := int64(fh.Length)
	sc.mu.Lock()
	if !sc.inflow.take(n) {
		sc.mu.Unlock()
		return sc.connError(http2.ErrCodeFlowControl, "connection window exceeded")
	}
	st := sc.streams[fh.StreamID]
	if st == nil || st.remoteClosed || st.reset || !st.inflow.take(n) {
		// A stream we closed or reset, or one that overran its window: give
		// the bytes back to the connection.
		sc.inflow.unacked += n
		idle := fh.StreamID > sc.maxStreamID
		halfClosed := st != nil && st.remoteClosed && !st.reset
		overrun := st != nil && !st.remoteClosed && !st.reset
		sc.mu.Unlock()
		if f == nil {
			if err := discard(sc.conn, n); err != nil {
				return err
			}
		}
		switch {
		case idle:
			return sc.connError(http2.ErrCodeProtocol, "DATA on idle stream")
		case halfClosed:
			return sc.resetStream(st, http2.ErrCodeStreamClosed, errors.New("hbone: DATA after END_STREAM"))
		case overrun:
			if err := sc.resetStream(st, http2.ErrCodeFlowControl, errors.New("hbone: stream window exceeded")); err != nil {
				return err
			}
		}
		return sc.flushConnCredit(false)
	}
	if f != nil {
		data := f.Data()
		// Padding is consumed at once.
		pad := n - int64(len(data))
		st.inflow.unacked += pad
		sc.inflow.unacked += pad
		if len(data) > 0 {
			copy(st.recv.reserve(len(data)), data)
			st.recv.commit(len(data))
		}
	} else if n > 0 {
		dst := st.recv.reserve(int(n))
		// The stream's reader waits for data to copy to its sink: write
		// the payload there directly, sparing the hand-off to the reader.
		// The reserved chunk stays ours until commit or abandon.
		sink := st.sink
		if !st.sinkWaiting || st.recv.Len() > 0 || n > maxDirectWrite {
			sink = nil
		}
		sc.mu.Unlock()
		_, err := io.ReadFull(sc.conn, dst)
		written := 0
		if err == nil && sink != nil {
			written = sink.tryWrite(dst)
		}
		sc.mu.Lock()
		if err != nil || st.reset {
			st.recv.abandon()
			if st.reset {
				st.recv.free()
				sc.inflow.unacked += n
			}
			sc.mu.Unlock()
			if err != nil {
				return err
			}
			return sc.flushConnCredit(false)
		}
		st.recv.commit(int(n))
		if written > 0 {
			st.recv.skip(written)
			streamIncr := st.inflow.consume(int64(written), streamUpdateThreshold)
			connIncr := sc.inflow.consume(int64(written), connUpdateThreshold)
			if written == int(n) && !fh.Flags.Has(http2.FlagDataEndStream) {
				sc.mu.Unlock()
				// The reader has nothing to do, but with more than one P
				// wake it all the same: readying a goroutine makes the
				// runtime wake an idle P, which then polls the network and
				// runs the upstream's answer at once. Without it the answer
				// often waits for an idle (halted) CPU to wake up: on 2
				// vCPUs that made the 1 KiB round trip about 10 µs slower in
				// a third of the runs. With one P (ztunnel's default) there
				// is no other P to wake, and the wake-up is a wasted
				// goroutine switch.
				if sc.wakeAfterDirectWrite {
					st.wakeReader()
				}
				if streamIncr > 0 || connIncr > 0 {
					return sc.writeFrames(func(fr *http2.Framer) error { return writeWindowUpdates(fr, st.id, streamIncr, connIncr) })
				}
				return nil
			}
			if streamIncr > 0 || connIncr > 0 {
				sc.mu.Unlock()
				if err := sc.writeFrames(func(fr *http2.Framer) error { return writeWindowUpdates(fr, st.id, streamIncr, connIncr) }); err != nil {
					return err
				}
				sc.mu.Lock()
			}
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		st.remoteClosed = true
		sc.maybeFinishLocked(st)
	}
	sc.mu.Unlock()
	st.wakeReader()
	return nil
}

func (sc *serverConn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return sc.connError(http2.ErrCodeProtocol, "even stream ID from client")
	}
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		// Trailers: allowed only to end the stream; their fields are dropped.
		if !f.StreamEnded() || st.remoteClosed {
			sc.mu.Unlock()
			return sc.resetStream(st, http2.ErrCodeProtocol, errors.New("hbone: unexpected HEADERS"))
		}
		st.remoteClosed = true
		sc.maybeFinishLocked(st)
		sc.mu.Unlock()
		st.wakeReader()
		return nil
	}
	if id <= sc.maxStreamID {
		sc.mu.Unlock()
		return sc.connError(http2.ErrCodeStreamClosed, "HEADERS on closed stream")
	}
	sc.maxStreamID = id
	refuse := sc.goingAway || sc.closed || uint32(sc.live) >= sc.maxStreams
	sc.mu.Unlock()
	if refuse {
		return sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
	}
	authority, header, err := parseRequest(f)
	if err != nil {
		return sc.writeBadRequest(id, err.Error())
	}
	st := newStream(sc, id, authority, header)
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return errConnClosed
	}
	st.sendWindow = sc.initialWindow
	st.remoteClosed = f.StreamEnded()
	sc.streams[id] = st
	sc.live++
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.srv.handlersWG.Add(1)
	sc.mu.Unlock()
	go sc.runHandler(st)
	return nil
}

func (sc *serverConn) runHandler(st *Stream) {
	defer sc.srv.handlersWG.Done()
	defer st.handlerReturned()
	h := sc.srv.Handler
	if h == nil {
		h = (&Forwarder{}).ServeStream
	}
	h(st)
}

// resetStream sends RST_STREAM for st and fails its pending operations.
func (sc *serverConn) resetStream(st *Stream, code http2.ErrCode, cause error) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.mu.Lock()
	if st.reset {
		sc.mu.Unlock()
		return nil
	}
	if cause == nil {
		cause = &StreamResetError{Code: uint32(code)}
	}
	sc.abortStreamLocked(st, cause)
	sc.mu.Unlock()
	return sc.writeLocked(func(fr *http2.Framer) error { return fr.WriteRSTStream(st.id, code) })
}

// abortStreamLocked marks st reset: reads and writes fail with err.
func (sc *serverConn) abortStreamLocked(st *Stream, err error) {
	if st.reset {
		return
	}
	st.reset = true
	st.err = err
	// Unread bytes go back to the connection window.
	sc.inflow.unacked += int64(st.recv.Len()) + st.inflow.unacked
	st.inflow.unacked = 0
	st.recv.free()
	close(st.abortCh)
	sc.maybeFinishLocked(st)
}

// maybeFinishLocked removes a stream that is closed both ways, and uncounts
// it once its handler has returned too.
func (sc *serverConn) maybeFinishLocked(st *Stream) {
	if !st.removed && (st.reset || st.remoteClosed && st.localClosed) {
		st.removed = true
		delete(sc.streams, st.id)
		st.cancel()
	}
	if st.removed && st.handlerDone && !st.uncounted {
		st.uncounted = true
		sc.live--
		if sc.live == 0 {
			if sc.goingAway && !sc.closed {
				go sc.close(errGoAwayDone)
			} else {
				sc.armIdleTimerLocked()
			}
		}
	}
}

// flushConnCredit sends a connection WINDOW_UPDATE once enough has been
// consumed (or whenever anything has, if force).
func (sc *serverConn) flushConnCredit(force bool) error {
	threshold := int64(connUpdateThreshold)
	if force {
		threshold = 1
	}
	sc.mu.Lock()
	n := sc.inflow.consume(0, threshold)
	sc.mu.Unlock()
	if n == 0 {
		return nil
	}
	return sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(n)) })
}

func (sc *serverConn) wakeWritersLocked() {
	if sc.flowCh != nil {
		close(sc.flowCh)
		sc.flowCh = nil
	}
}

func (sc *serverConn) armIdleTimer() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.armIdleTimerLocked()
}

func (sc *serverConn) armIdleTimerLocked() {
	d := sc.srv.idleTimeout()
	if d < 0 || sc.closed || sc.live > 0 {
		return
	}
	if sc.idleTimer == nil {
		sc.idleTimer = time.AfterFunc(d, sc.onIdle)
		return
	}
	sc.idleTimer.Reset(d)
}

func (sc *serverConn) onIdle() {
	sc.mu.Lock()
	idle := sc.live == 0 && !sc.closed
	sc.mu.Unlock()
	if idle {
		_ = sc.connError(http2.ErrCodeNo, "idle")
		sc.close(errIdleTimeout)
	}
}

// goAway starts a graceful close: GOAWAY now, close when no stream is left.
func (sc *serverConn) goAway() {
	sc.mu.Lock()
	if sc.goingAway || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.goingAway = true
	last, live := sc.maxStreamID, sc.live
	sc.mu.Unlock()
	_ = sc.writeFrames(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if live == 0 {
		sc.close(errGoAwayDone)
	}
}

// close ends the connection and aborts every stream with err.
func (sc *serverConn) close(err error) {
	if err == nil {
		err = errConnClosed
	}
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.closed = true
	sc.closeErr = err
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	for _, st := range sc.streams {
		sc.abortStreamLocked(st, fmt.Errorf("%w: %w", errConnClosed, err))
	}
	sc.wakeWritersLocked()
	sc.mu.Unlock()
	sc.cancel()
	_ = sc.conn.Close()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
