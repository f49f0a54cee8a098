//go:build netns

package meshtest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/integration/netlab"
)

func hello(p *netlab.Pod) []byte { return p.Hello(200) }

// blocked checks that a connection from a pod to dst is refused or reset
// and that not one byte of the echo comes back. The dial itself may succeed:
// it ends at the client's own ztunnel, which resets the connection when the
// upstream refuses.
func blocked(p *netlab.Pod, dst netip.AddrPort) error {
	c, err := p.DialTCP(dst)
	if err != nil {
		return nil // refused at once
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := hello(p)
	_, werr := c.Write(msg)
	if werr == nil {
		_ = c.CloseWrite()
	}
	got, err := io.ReadAll(c)
	if len(got) > 0 {
		return fmt.Errorf("%s -> %s: %d echo bytes came back, want none", p.Name, dst, len(got))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s -> %s: connection neither echoed nor closed within 5 s", p.Name, dst)
	}
	return nil // EOF or reset without data
}

// transfer sends size pseudo-random bytes from a pod to an echo server at
// dst while reading the echo, and compares SHA-256 and length both ways.
func transfer(p *netlab.Pod, dst netip.AddrPort, size int64, seed uint64) error {
	c, err := p.DialTCP(dst)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		src := io.LimitReader(rand.NewChaCha8(seedBytes(seed)), size)
		_, err := io.CopyBuffer(io.MultiWriter(c, sent), src, make([]byte, 256<<10))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, rerr := io.CopyBuffer(got, c, make([]byte, 256<<10))
	if err := <-werr; err != nil {
		return fmt.Errorf("%s -> %s: send: %w", p.Name, dst, err)
	}
	if rerr != nil {
		return fmt.Errorf("%s -> %s: receive: %w after %d bytes", p.Name, dst, rerr, n)
	}
	if n != size {
		return fmt.Errorf("%s -> %s: %d bytes came back, sent %d", p.Name, dst, n, size)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("%s -> %s: SHA-256 of the echo %x differs from what was sent %x", p.Name, dst, got.Sum(nil), sent.Sum(nil))
	}
	return nil
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

// roundTrip writes msg on an open echo connection and reads it back.
func roundTrip(c net.Conn, msg []byte) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %q, want %q", got, msg)
	}
	return nil
}
