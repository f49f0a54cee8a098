package redirect

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// home is the network namespace the process started in, where every thread
// not inside Do is, and where Do returns its thread. It is opened once, while
// the package initializes on the main thread (locked to it during
// initialization): opening the thread's namespace on every Do cost an open
// and a close of /proc/<pid>/task/<tid>/ns/net per socket, about 7 % of the
// server ztunnel's CPU with a new connection per request.
var home, homeErr = netns.Get()

// Netns is an open handle on a network namespace, typically a pod's. Holding
// it keeps the namespace alive. Its methods are safe for concurrent use,
// except Close, which must come after every other use.
type Netns struct {
	path   string
	handle netns.NsHandle
	spare  spareSockets
}

// OpenNetns opens the network namespace at path, as a CNI runtime passes it
// (for example /var/run/netns/cni-1234 or /proc/1234/ns/net).
func OpenNetns(path string) (*Netns, error) {
	if path == "" {
		return nil, errors.New("redirect: empty netns path")
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("redirect: open netns %s: %w", path, err)
	}
	return &Netns{path: path, handle: h}, nil
}

// Path is the path the namespace was opened from.
func (n *Netns) Path() string { return n.path }

// Fd is the file descriptor of the namespace handle, valid until Close.
func (n *Netns) Fd() int { return int(n.handle) }

// Close releases the handle and the spare sockets a Dialer kept (see
// Netns.socket). Sockets handed out stay valid.
func (n *Netns) Close() error {
	n.spare.close()
	if !n.handle.IsOpen() {
		return nil
	}
	return n.handle.Close()
}

// String describes the namespace for logs.
func (n *Netns) String() string { return "netns " + n.path }

// Do runs fn on a locked OS thread inside the namespace and moves the thread
// back to its original namespace afterwards. Sockets fn creates live in the
// namespace and may be used from any goroutine once fn returns; goroutines fn
// starts do not run in the namespace. If the thread cannot be moved back, it
// is not returned to the Go scheduler (the runtime ends it).
func (n *Netns) Do(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !n.handle.IsOpen() {
		return fmt.Errorf("redirect: %s is closed", n)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := n.doLocked(fn)
		var lost errThreadLost
		if !errors.As(err, &lost) {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// doLocked switches the (locked) thread into the namespace, runs fn and
// switches back.
func (n *Netns) doLocked(fn func() error) error {
	if homeErr != nil {
		return fmt.Errorf("redirect: the process's own netns: %w", homeErr)
	}
	if err := netns.Set(n.handle); err != nil {
		return fmt.Errorf("redirect: enter %s: %w", n, err)
	}
	fnErr := fn()
	if err := netns.Set(home); err != nil {
		return errors.Join(fnErr, errThreadLost{err})
	}
	return fnErr
}

// InNetns opens the namespace at path, runs fn inside it (see Netns.Do) and
// closes the handle.
func InNetns(ctx context.Context, path string, fn func() error) error {
	n, err := OpenNetns(path)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(ctx, fn)
}

// errThreadLost marks a thread that could not return to its namespace.
type errThreadLost struct{ err error }

func (e errThreadLost) Error() string {
	return "redirect: restore thread network namespace: " + e.err.Error()
}
