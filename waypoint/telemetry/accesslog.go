package telemetry

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// jsonLog writes access-log lines in the format of slog's JSONHandler
// (without options) under a logger With(with...): "time", "level", "msg",
// the fixed attributes, then the line's own, one Write per line. It does
// without slog's per-attribute work (a Record of 22 attributes, the
// handler's checks per attribute), which was most of the cost of the
// access log.
type jsonLog struct {
	w      io.Writer
	prefix []byte // the fixed attributes, each `,"key":"value"`
}

var lineBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 1024)
	return &b
}}

// SetAccessWriter makes the access log (request and connection lines)
// write to w, byte for byte as slog.NewJSONHandler(w, nil) under a logger
// With(with...) writes it at level INFO; with holds key and value pairs.
// It replaces the access logger given to New; set it before the first
// request. w must be safe for concurrent Writes; each Write is one line.
func (t *Telemetry) SetAccessWriter(w io.Writer, with ...string) {
	l := &jsonLog{w: w}
	for i := 0; i+1 < len(with); i += 2 {
		l.prefix = appendJSONString(l.prefix, with[i], with[i+1])
	}
	t.access, t.accessJSON = nil, l
}

// line is one access-log line being built.
type line struct {
	l  *jsonLog
	bp *[]byte
	b  []byte
}

func (l *jsonLog) start(msg string) line {
	bp := lineBufs.Get().(*[]byte)
	b := append((*bp)[:0], `{"time":"`...)
	b = time.Now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"`...)
	b = appendEscaped(b, msg)
	b = append(b, '"')
	b = append(b, l.prefix...)
	return line{l: l, bp: bp, b: b}
}

func (ln *line) str(k, v string) { ln.b = appendJSONString(ln.b, k, v) }

func (ln *line) int(k string, v int64) {
	ln.b = append(ln.b, ',', '"')
	ln.b = appendEscaped(ln.b, k)
	ln.b = append(ln.b, '"', ':')
	ln.b = strconv.AppendInt(ln.b, v, 10)
}

func (ln *line) uint(k string, v uint64) {
	ln.b = append(ln.b, ',', '"')
	ln.b = appendEscaped(ln.b, k)
	ln.b = append(ln.b, '"', ':')
	ln.b = strconv.AppendUint(ln.b, v, 10)
}

// end writes the line out.
func (ln *line) end() {
	ln.b = append(ln.b, '}', '\n')
	_, _ = ln.l.w.Write(ln.b)
	if cap(ln.b) <= 64<<10 {
		*ln.bp = ln.b[:0]
		lineBufs.Put(ln.bp)
	}
}

func appendJSONString(b []byte, k, v string) []byte {
	b = append(b, ',', '"')
	b = appendEscaped(b, k)
	b = append(b, '"', ':', '"')
	b = appendEscaped(b, v)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendEscaped appends s as the inside of a JSON string, escaped as
// slog's JSONHandler does: '"', '\\' and control characters (\n, \r, \t
// by name, others as \u00XX), invalid UTF-8 as \ufffd, U+2028 and U+2029
// as \u2028 and \u2029; '<', '>' and '&' stay as they are.
func appendEscaped(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
