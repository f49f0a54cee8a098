package redirect

import (
	"context"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// socketBatch is how many TCP sockets of one family a dial creates at once
// inside a namespace. A socket belongs to the namespace it was created in,
// whatever thread uses it later, and creating it there costs a locked
// thread and two setns calls, several times the socket call itself: with a
// new connection per request that was about 9 % of the server ztunnel's CPU.
// The dial takes one socket of the batch and the rest wait for the next
// dials of the pod; options, bind and connect are applied by the dial.
// (A variable for BenchmarkDial's baseline of one socket per dial.)
var socketBatch = 8

// maxSpare bounds the sockets kept per family: concurrent dials that each
// found none may each have made a batch.
const maxSpare = 16

// spareSockets holds unused, unbound TCP sockets created in the namespace.
type spareSockets struct {
	mu     sync.Mutex
	v4, v6 []int
	closed bool
}

func (s *spareSockets) list(family int) *[]int {
	if family == unix.AF_INET {
		return &s.v4
	}
	return &s.v6
}

// take pops a spare socket of the family, or returns -1.
func (s *spareSockets) take(family int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.list(family)
	k := len(*l)
	if s.closed || k == 0 {
		return -1
	}
	fd := (*l)[k-1]
	*l = (*l)[:k-1]
	return fd
}

// put keeps fds for later dials, closing those over maxSpare or every one
// once the namespace is closed.
func (s *spareSockets) put(family int, fds []int) {
	s.mu.Lock()
	l := s.list(family)
	var drop []int
	if s.closed {
		drop = fds
	} else {
		room := max(0, maxSpare-len(*l))
		keep := min(room, len(fds))
		*l = append(*l, fds[:keep]...)
		drop = fds[keep:]
	}
	s.mu.Unlock()
	for _, fd := range drop {
		_ = unix.Close(fd)
	}
}

// close closes every spare socket; later puts close theirs.
func (s *spareSockets) close() {
	s.mu.Lock()
	fds := append(s.v4, s.v6...)
	s.v4, s.v6, s.closed = nil, nil, true
	s.mu.Unlock()
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// socket returns a new non-blocking, close-on-exec TCP socket of the family
// (unix.AF_INET or unix.AF_INET6) that belongs to the namespace: a spare one,
// or the first of a batch created now, whose others are kept.
func (n *Netns) socket(ctx context.Context, family int) (int, error) {
	if fd := n.spare.take(family); fd >= 0 {
		return fd, nil
	}
	fds := make([]int, 0, socketBatch)
	err := n.Do(ctx, func() error {
		for range socketBatch {
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				if len(fds) > 0 {
					return nil // the dial needs one; the limit was reached
				}
				return os.NewSyscallError("socket", err)
			}
			fds = append(fds, fd)
		}
		return nil
	})
	if err != nil {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return -1, err
	}
	n.spare.put(family, fds[1:])
	return fds[0], nil
}
