package hbone

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// chunkReader returns its data in reads of the given sizes, cycling, and
// records the buffer size of every Read call.
type chunkReader struct {
	data    []byte
	sizes   []int
	i       int
	bufLens []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.bufLens = append(r.bufLens, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), r.sizes[r.i%len(r.sizes)])
	r.i++
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

func TestCopyAdaptiveGrowsAndShrinks(t *testing.T) {
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	// Small reads, then bulk reads (fill whatever buffer they get), then
	// small reads again.
	small := 1 << 10
	var sizes []int
	for range 4 {
		sizes = append(sizes, small)
	}
	for range 8 {
		sizes = append(sizes, copyBufferSize)
	}
	for range 4 {
		sizes = append(sizes, small)
	}
	r := &chunkReader{data: data, sizes: sizes}
	var out bytes.Buffer
	if err := copyAdaptive(&out, r, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("copied bytes differ")
	}
	// The first reads use the small buffer; the read after the first full
	// one uses the large buffer; after a small read, the small one again.
	if r.bufLens[0] != smallCopyBufferSize {
		t.Fatalf("first read buffer %d, want %d", r.bufLens[0], smallCopyBufferSize)
	}
	if r.bufLens[5] != copyBufferSize {
		t.Fatalf("read after a full small buffer used %d bytes, want %d (reads: %v)", r.bufLens[5], copyBufferSize, r.bufLens[:14])
	}
	if r.bufLens[13] != smallCopyBufferSize {
		t.Fatalf("read after a small read on the large buffer used %d bytes, want %d (reads: %v)", r.bufLens[13], smallCopyBufferSize, r.bufLens[:14])
	}
}

type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

type badWriter struct{}

func (badWriter) Write(p []byte) (int, error) { return len(p) + 1, nil }

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestCopyAdaptiveWriteErrors(t *testing.T) {
	src := func() io.Reader { return bytes.NewReader([]byte("hello")) }
	if err := copyAdaptive(shortWriter{}, src(), nil); !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("short write: got %v", err)
	}
	if err := copyAdaptive(badWriter{}, src(), nil); !errors.Is(err, errInvalidWrite) {
		t.Fatalf("invalid write: got %v", err)
	}
	boom := errors.New("boom")
	if err := copyAdaptive(failWriter{boom}, src(), nil); !errors.Is(err, boom) {
		t.Fatalf("failing write: got %v", err)
	}
	readErr := errors.New("read failed")
	r := io.MultiReader(bytes.NewReader([]byte("abc")), iotestErrReader{readErr})
	var out bytes.Buffer
	if err := copyAdaptive(&out, r, nil); !errors.Is(err, readErr) || out.String() != "abc" {
		t.Fatalf("failing read: got %v, copied %q", err, out.String())
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }
