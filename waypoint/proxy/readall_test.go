package proxy

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestReadAll(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 300)
	for _, tc := range []struct {
		name string
		size int64
		data []byte
	}{
		{"exact", 3000, body},
		{"unknown size", -1, body},
		{"announced smaller", 100, body},
		{"announced larger", 5000, body},
		{"empty", 0, nil},
		{"at the limit", DefaultMaxRetryBody, body},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAll(iotest.OneByteReader(bytes.NewReader(tc.data)), tc.size)
			if err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("got %d bytes, %v; want %d bytes", len(got), err, len(tc.data))
			}
		})
	}
	boom := errors.New("boom")
	got, err := readAll(io.MultiReader(bytes.NewReader(body[:10]), iotest.ErrReader(boom)), 3000)
	if !errors.Is(err, boom) || !bytes.Equal(got, body[:10]) {
		t.Fatalf("a failing body: %q, %v; want the 10 bytes read and boom", got, err)
	}
	r := bytes.NewReader(body)
	if n := testing.AllocsPerRun(100, func() {
		r.Reset(body)
		_, _ = readAll(r, int64(len(body)))
	}); n != 1 {
		t.Fatalf("%v allocations for a body of the announced size, want 1", n)
	}
}
