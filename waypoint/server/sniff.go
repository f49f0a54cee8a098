package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
)

// DefaultSniffTimeout is how long the waypoint waits for the first bytes
// of a tunnel to a port whose protocol nothing declares before it passes
// the tunnel through as TCP. Server-first protocols (the client waits for
// the server to speak) pay it once per connection: declare them with
// appProtocol tcp.
const DefaultSniffTimeout = 500 * time.Millisecond

// maxSniff bounds the bytes read to find an HTTP/1.x request line.
const maxSniff = 8 << 10

// http2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4),
// which h2c with prior knowledge and gRPC send first.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniffed is what the first bytes of a tunnel say it carries.
type sniffed int

const (
	sniffMore  sniffed = iota // undecided: more bytes are needed
	sniffTCP                  // anything else: pass through
	sniffHTTP1                // an HTTP/1.x request line
	sniffHTTP2                // the HTTP/2 client preface
)

func (s sniffed) String() string {
	switch s {
	case sniffTCP:
		return "tcp"
	case sniffHTTP1:
		return "http/1.1"
	case sniffHTTP2:
		return "http/2"
	}
	return "undecided"
}

// classify decides what b, the first bytes of a tunnel, start: the HTTP/2
// preface, an HTTP/1.x request line ("METHOD target HTTP/1.x" then CRLF or
// LF), or something else; sniffMore while b is a prefix of either.
func classify(b []byte) sniffed {
	if len(b) == 0 {
		return sniffMore
	}
	if len(b) < len(http2Preface) && http2Preface[:len(b)] == string(b) {
		return sniffMore
	}
	if bytes.HasPrefix(b, []byte(http2Preface)) {
		return sniffHTTP2
	}
	// The method: a token of at most 32 characters, then a space.
	i := 0
	for i < len(b) && i <= 32 && isTokenChar(b[i]) {
		i++
	}
	switch {
	case i == len(b) && i <= 32:
		return sniffMore
	case i == 0 || i > 32 || b[i] != ' ':
		return sniffTCP
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		if len(b) >= maxSniff || bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
			return sniffTCP
		}
		return sniffMore
	}
	line := bytes.TrimSuffix(b[:nl], []byte("\r"))
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 || len(parts[1]) == 0 || bytes.ContainsAny(parts[1], "\r\x00") {
		return sniffTCP
	}
	if v := string(parts[2]); v != "HTTP/1.1" && v != "HTTP/1.0" {
		return sniffTCP
	}
	return sniffHTTP1
}

// isTokenChar reports whether c may appear in an HTTP token (RFC 9110
// §5.6.2), as a method's characters.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// sniff reads the first bytes of an accepted tunnel until classify
// decides, the timeout passes (sniffTCP: the client waits for the server),
// or the client half-closes (sniffTCP). It returns the bytes read, which
// the caller must replay; err is set only when the tunnel broke.
func sniff(st *hbone.Stream, timeout time.Duration) (sniffed, []byte, error) {
	if err := st.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return sniffTCP, nil, err
	}
	defer func() { _ = st.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, min(cap(buf), maxSniff))...)[:len(buf)]
		}
		n, err := st.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if d := classify(buf); d != sniffMore {
			return d, buf, nil
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), isTimeout(err):
			return sniffTCP, buf, nil
		default:
			return sniffTCP, buf, err
		}
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// replayConn is a connection whose first reads return pre, the bytes
// sniffing consumed, before the connection's own.
type replayConn struct {
	net.Conn
	pre []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection when it can, else closes it.
func (c *replayConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return c.Conn.Close()
}
