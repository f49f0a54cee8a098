package hbone

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestRecvBuffer(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var b recvBuffer
	var want, got bytes.Buffer
	next := byte(0)
	for range 2000 {
		switch rng.IntN(4) {
		case 0, 1: // a frame arrives
			n := 1 + rng.IntN(largeChunk)
			if rng.IntN(2) == 0 {
				n = 1 + rng.IntN(3000)
			}
			dst := b.reserve(n)
			if len(dst) != n {
				t.Fatalf("reserve(%d) = %d bytes", n, len(dst))
			}
			if rng.IntN(8) == 0 {
				b.abandon()
				continue
			}
			for i := range dst {
				dst[i] = next
				next++
			}
			want.Write(dst)
			b.commit(n)
		case 2:
			p := make([]byte, 1+rng.IntN(300<<10))
			n := b.Read(p)
			got.Write(p[:n])
		case 3:
			k := rng.IntN(b.Len() + 1)
			b.skip(k)
			got.Write(want.Bytes()[got.Len() : got.Len()+k])
		}
		if b.Len() != want.Len()-got.Len() {
			t.Fatalf("Len = %d, want %d", b.Len(), want.Len()-got.Len())
		}
	}
	p := make([]byte, b.Len())
	got.Write(p[:b.Read(p)])
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatal("bytes read differ from bytes written")
	}
	if len(b.chunks) != 0 {
		t.Errorf("%d chunks left in an empty buffer", len(b.chunks))
	}

	// free while a frame is being filled keeps that chunk until abandon.
	b.commit(copy(b.reserve(10), "0123456789"))
	dst := b.reserve(5)
	b.free()
	if b.Len() != 0 || len(b.chunks) != 1 {
		t.Fatalf("after free with a pending reservation: Len %d, %d chunks", b.Len(), len(b.chunks))
	}
	copy(dst, "abcde") // still ours
	b.abandon()
	b.free()
	if len(b.chunks) != 0 {
		t.Errorf("%d chunks left after abandon and free", len(b.chunks))
	}
}
