package hbone

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// parseRequest checks a HEADERS block against the HBONE request format.
func parseRequest(f *http2.MetaHeadersFrame) (authorityAddr netip.AddrPort, header http.Header, err error) {
	if f.Truncated {
		return authorityAddr, nil, errors.New("request headers too large")
	}
	var method, authority string
	var sawAuthority bool
	header = make(http.Header, len(f.Fields))
	for _, hf := range f.Fields {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":authority":
			authority, sawAuthority = hf.Value, true
		case ":path", ":scheme":
			return authorityAddr, nil, fmt.Errorf("%s in a CONNECT request", hf.Name)
		case ":protocol":
			return authorityAddr, nil, errors.New("extended CONNECT is not supported")
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return authorityAddr, nil, fmt.Errorf("connection-specific header %q", hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return authorityAddr, nil, errors.New(`te header other than "trailers"`)
			}
		default:
			if !hf.IsPseudo() {
				header.Add(hf.Name, hf.Value)
			}
		}
	}
	if method != http.MethodConnect {
		return authorityAddr, nil, fmt.Errorf("method %q, want CONNECT", method)
	}
	if !sawAuthority {
		return authorityAddr, nil, errors.New("no :authority")
	}
	ap, err := ParseAuthority(authority)
	if err != nil {
		return authorityAddr, nil, err
	}
	return ap, header, nil
}

// writeBadRequest answers a request that never became a Stream with 400.
func (sc *serverConn) writeBadRequest(id uint32, reason string) error {
	return sc.writeFrames(func(fr *http2.Framer) error {
		if err := sc.writeResponseHeadersLocked(id, http.StatusBadRequest, false); err != nil {
			return err
		}
		if err := fr.WriteData(id, true, []byte(truncate(reason, maxRejectBody)+"\n")); err != nil {
			return err
		}
		return fr.WriteRSTStream(id, http2.ErrCodeNo)
	})
}

// writeResponseHeadersLocked writes a response HEADERS frame; wmu is held.
func (sc *serverConn) writeResponseHeadersLocked(id uint32, status int, endStream bool) error {
	sc.hbuf.Reset()
	_ = sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	if status != http.StatusOK {
		_ = sc.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"})
	}
	return sc.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: sc.hbuf.Bytes(), EndStream: endStream, EndHeaders: true,
	})
}

// ForwardedFor formats the RFC 7239 `for=` element naming a tunnel's client
// (an IPv6 address quoted in brackets), for the Forwarded header of a
// Request: ztunnel names the application's address, a waypoint the client
// of a connection it passes through.
func ForwardedFor(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		return `for="[` + ip.String() + `]"`
	}
	return "for=" + ip.String()
}
