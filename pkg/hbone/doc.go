// Package hbone owns HBONE in Ambit: TCP tunnelled in HTTP/2 CONNECT streams
// over mutual TLS 1.3 (ALPN "h2"), wire-compatible with Istio's ztunnel.
//
// It provides both ends of a tunnel and nothing above them:
//
//   - Server accepts HBONE connections on a listener the caller opens (so it
//     can live inside a pod's network namespace, port 15008), validates each
//     CONNECT request and hands it to a Handler as a *Stream, a net.Conn that
//     knows the peer's SPIFFE ID, the requested destination (:authority) and
//     the request headers. Forwarder is the Handler that dials the
//     destination and copies bytes both ways.
//   - Dialer opens tunnels: Dial returns a *Conn for one CONNECT stream over
//     a pooled HTTP/2 connection, one pool per (source identity, destination
//     identity, peer address). A connection one of whose streams has
//     carried Dialer.BulkStreamBytes (4 MiB) one way is retired: later
//     tunnels get another connection, and it closes after its last stream.
//
// Policy (who may reach what), certificate management and traffic capture
// belong to the callers; TLS configurations come from package identity.
//
// # Wire format
//
// A tunnel is one HTTP/2 stream. The request is exactly
//
//	:method = CONNECT
//	:authority = <ip>:<port>   (IPv4, or bracketed IPv6; see ParseAuthority)
//
// with no :scheme, :path or :protocol (those make it an extended CONNECT or a
// malformed request, RFC 9113 section 8.5, RFC 8441), plus optional headers
// such as traceparent, baggage and forwarded. The server answers 200 to open
// the tunnel; 400 for a malformed request (checked before any Handler runs);
// and whatever the Handler chooses otherwise, by convention 401/403 for
// policy and 503 when the destination is unreachable. After the 200, DATA
// frames carry the bytes; END_STREAM in either direction is a TCP half-close
// (CloseWrite), and RST_STREAM an abort.
//
// The client may send its first bytes before the answer: Request.EarlyData
// goes in DATA frames right after the request HEADERS, in the same write,
// and Pending.Write (after Dialer.Start) sends more as it comes, until
// Pending.Wait. HTTP/2 allows DATA on an open stream at any time, and a
// server buffers them like any request body until its handler reads (this
// package's Server, and x/net-based ones such as Istio's); a server that
// refuses the tunnel discards them. It spares a client that speaks first
// (HTTP, TLS) one round trip between the proxies on every new connection.
//
// # Why neither side is x/net's HTTP/2
//
// golang.org/x/net/http2.Server ends a response only when the handler
// returns, and then also resets the request stream (RST_STREAM NO_ERROR), so
// a server cannot half-close while the client keeps sending. HBONE needs
// half-close in both directions, so Server implements the (small) CONNECT-only
// subset of HTTP/2 directly on x/net's http2.Framer and hpack. Dialer does
// the same for the client side, on the same frame writer, flow-control and
// receive-buffer code (framewriter.go, recvbuf.go): x/net's Transport moves
// every request body through a pipe to a writer goroutine and every response
// body through its read loop, and returns flow-control credit every few KiB,
// which cost a tunnel about a third of its throughput and several
// microseconds per round trip. Here Conn.Write frames DATA directly under
// the connection's write lock, one read loop per connection reads DATA
// payloads straight into per-stream buffers, and WINDOW_UPDATEs go out once
// a quarter of a window has been read. The client interoperates with
// x/net-based servers such as Istio's.
//
// # Tuning
//
// The server advertises a 2 MiB stream window, a 16 MiB connection window
// and 256 KiB frames; the client accepts 256 KiB frames with a 2 MiB stream
// and 1 GiB connection window; Join copies through 16 KiB buffers that grow
// to 256 KiB while reads fill them, and when
// Join's copier waits for a tunnel's bytes (a *Stream or a *Conn joined to a
// *net.TCPConn), the connection's read loop writes a small DATA frame to the
// TCP socket itself (one non-blocking attempt), so that a message does not
// wait for a goroutine switch; JoinCounting counts bytes for callers without
// a wrapper that would hide the socket. Socket reads and writes on the data
// path (under TLS, and Join's copies to and from TCP) are raw system calls
// on the non-blocking socket (rawio_linux.go), which spares the wake-up of
// the Go runtime's monitor thread after every idle period. Under both sides' TLS, the
// records of one Write leave in one write system call of up to 128 KiB
// instead of one per 16 KiB record (tlsconn.go). See the constants in
// server.go, dialer.go and clientconn.go, and bench_test.go for the
// measurements.
package hbone
