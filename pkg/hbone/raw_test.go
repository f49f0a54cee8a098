//lint:file-ignore SA1019 a raw x/net client drives the server with requests the Dialer never sends.

package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawClientConn is a plain x/net HTTP/2 client connection to ts, for
// requests the Dialer would not send.
func rawClientConn(t testing.TB, ts *testServer) *http2.ClientConn {
	t.Helper()
	cfg, _ := testPKI(t).clientTLS(clientID, serverID)
	tc, err := tls.Dial("tcp", ts.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func rawRoundTrip(cc *http2.ClientConn, method, authority string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "https://placeholder/", nil)
	if err != nil {
		return 0, err
	}
	req.Host = authority
	req.URL = &url.URL{Scheme: "https", Host: authority, Path: "/"}
	if method == http.MethodConnect {
		req.URL.Path = ""
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// rawResult is what the server answered to a raw request.
type rawResult struct {
	status  int           // :status of the response, 0 if none
	rst     http2.ErrCode // RST_STREAM code for stream 1, if any
	rstSeen bool
	goAway  bool // connection error
}

// rawFrameRequest sends one HEADERS frame on stream 1 with exactly the given
// fields (no validation) over an in-memory connection to a Server whose
// Handler accepts, and reports the answer.
func rawFrameRequest(t testing.TB, fields [][2]string, endStream bool) rawResult {
	t.Helper()
	srv := &Server{Handler: func(s *Stream) { s.Accept() }, Logger: discardLogger}
	res, err := rawFrameExchange(srv, fields, endStream)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func rawFrameExchange(srv *Server, fields [][2]string, endStream bool) (rawResult, error) {
	cli, srvConn := net.Pipe()
	served := make(chan error, 1)
	go func() { served <- srv.serveHTTP2(context.Background(), srvConn, clientID, nil) }()
	defer func() {
		cli.Close()
		<-served
		srv.Close()
	}()
	_ = cli.SetDeadline(time.Now().Add(10 * time.Second))

	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range fields {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	writeErr := make(chan error, 1)
	go func() {
		// net.Pipe is synchronous: write while the main goroutine reads.
		fr := http2.NewFramer(cli, nil)
		if _, err := io.WriteString(cli, http2.ClientPreface); err != nil {
			writeErr <- err
			return
		}
		if err := fr.WriteSettings(); err != nil {
			writeErr <- err
			return
		}
		writeErr <- fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: 1, BlockFragment: hbuf.Bytes(), EndStream: endStream, EndHeaders: true,
		})
	}()
	fr := http2.NewFramer(io.Discard, cli)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var res rawResult
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
				return res, nil
			}
			return res, err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				res.status, _ = strconv.Atoi(f.PseudoValue("status"))
				if res.status == http.StatusOK {
					return res, <-writeErr
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				res.rst, res.rstSeen = f.ErrCode, true
				return res, <-writeErr
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() && res.status != 0 && endStream {
				return res, <-writeErr
			}
		case *http2.GoAwayFrame:
			res.goAway = true
			return res, nil
		}
	}
}
