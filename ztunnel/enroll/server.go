package enroll

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Hooks is what ztunnel does when a pod joins or leaves the enrolled set.
// Calls for one pod UID never overlap; calls for different UIDs may.
type Hooks interface {
	// OnAdd starts serving pod (for example: enter its netns, open the
	// listeners, install the redirection). An error fails the AddPod request
	// and the pod is not kept. OnAdd must be idempotent: Resync replays it
	// after a restart for pods whose netns may already hold rules.
	OnAdd(ctx context.Context, pod Pod) error
	// OnRemove stops serving pod. The pod leaves the set even when it fails.
	OnRemove(ctx context.Context, pod Pod) error
}

// HookFuncs adapts two functions to Hooks; a nil function does nothing.
type HookFuncs struct {
	Add    func(ctx context.Context, pod Pod) error
	Remove func(ctx context.Context, pod Pod) error
}

// OnAdd calls f.Add.
func (f HookFuncs) OnAdd(ctx context.Context, pod Pod) error {
	if f.Add == nil {
		return nil
	}
	return f.Add(ctx, pod)
}

// OnRemove calls f.Remove.
func (f HookFuncs) OnRemove(ctx context.Context, pod Pod) error {
	if f.Remove == nil {
		return nil
	}
	return f.Remove(ctx, pod)
}

// Options configures a Server. Zero values select the defaults.
type Options struct {
	// SocketPath is the unix socket to serve on (DefaultSocketPath).
	SocketPath string
	// StateFile persists the enrolled set (DefaultStateFile).
	StateFile string
	// Hooks are called as pods join and leave (none: HookFuncs{}).
	Hooks Hooks
	// Logger receives the server's logs (slog.Default()).
	Logger *slog.Logger
	// MaxRequestBytes bounds a request body (64 KiB).
	MaxRequestBytes int64
	// HookTimeout bounds one OnAdd or OnRemove call (30 s).
	HookTimeout time.Duration
	// ReadTimeout bounds reading one request, headers and body (10 s).
	ReadTimeout time.Duration
	// HostProc is where the host's /proc is mounted, for netns paths under
	// /proc/ (see HostNetnsPath); empty: such paths are opened as they are.
	HostProc string
}

// Server serves the enrolment API and keeps the enrolled set. Its methods are
// safe for concurrent use.
type Server struct {
	opts  Options
	log   *slog.Logger
	hooks Hooks

	keys keyedMutex // per-UID serialisation of Add, Remove and Resync

	mu   sync.Mutex
	pods map[string]Pod

	persistMu sync.Mutex // orders snapshots and writes of the state file
}

// NewServer returns a server holding the pods persisted in opts.StateFile. It
// calls no hook: call Resync to replay them. A corrupt state file is moved
// aside and logged, and the server starts empty.
func NewServer(opts Options) (*Server, error) {
	if opts.SocketPath == "" {
		opts.SocketPath = DefaultSocketPath
	}
	if opts.StateFile == "" {
		opts.StateFile = DefaultStateFile
	}
	if opts.Hooks == nil {
		opts.Hooks = HookFuncs{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = 64 << 10
	}
	if opts.HookTimeout <= 0 {
		opts.HookTimeout = 30 * time.Second
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 10 * time.Second
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "enroll"), hooks: opts.Hooks}
	pods, err := loadState(opts.StateFile)
	var corrupt *corruptStateError
	switch {
	case errors.As(err, &corrupt):
		s.log.Error("enrolment state lost", "err", err)
	case err != nil:
		return nil, err
	}
	s.pods = pods
	return s, nil
}

// SocketPath returns the socket the server listens on.
func (s *Server) SocketPath() string { return s.opts.SocketPath }

// HookError is an error returned by a hook.
type HookError struct {
	Op  string // "OnAdd" or "OnRemove"
	Pod Pod
	Err error
}

func (e *HookError) Error() string {
	return fmt.Sprintf("ztunnel could not enrol pod %s: %s: %v", e.Pod.Key(), e.Op, e.Err)
}

func (e *HookError) Unwrap() error { return e.Err }

// Add enrols pod (see the package doc for the semantics). It returns whether
// anything changed. Errors are a *ValidationError (bad input, including a
// netns path that is not a network namespace), a *HookError (OnAdd failed) or
// a persistence error.
func (s *Server) Add(ctx context.Context, pod Pod) (changed bool, err error) {
	if _, err := pod.Request().ToPod(); err != nil {
		return false, err
	}
	if err := checkNetns(pod.NetnsPath, s.opts.HostProc); err != nil {
		return false, err
	}
	pod = pod.clone()
	unlock := s.keys.lock(pod.UID)
	defer unlock()

	s.mu.Lock()
	old, had := s.pods[pod.UID]
	s.mu.Unlock()
	if had && old.Equal(pod) {
		s.log.Debug("pod already enrolled", "pod", pod.Key())
		return false, nil
	}
	if had {
		s.log.Info("replacing enrolled pod", "pod", pod.Key(), "oldNetns", old.NetnsPath, "netns", pod.NetnsPath,
			"oldContainerID", old.ContainerID, "containerID", pod.ContainerID)
		if err := s.callHook(ctx, "OnRemove", old); err != nil {
			s.log.Warn("removing the replaced pod failed", "pod", old.Key(), "err", err)
		}
	}
	// Persist first: the state file is the intent, so a crash during OnAdd is
	// repaired by Resync.
	s.set(pod.UID, &pod)
	if err := s.persist(); err != nil {
		s.set(pod.UID, nil)
		if perr := s.persist(); perr != nil {
			s.log.Error("persisting enrolment state failed", "err", perr)
		}
		return false, err
	}
	if err := s.callHook(ctx, "OnAdd", pod); err != nil {
		s.set(pod.UID, nil)
		if perr := s.persist(); perr != nil {
			s.log.Error("persisting enrolment state failed", "err", perr)
		}
		s.log.Warn("enrolment failed", "pod", pod.Key(), "err", err)
		return false, err
	}
	s.log.Info("pod enrolled", "pod", pod.Key(), "netns", pod.NetnsPath, "podIPs", pod.PodIPs)
	return true, nil
}

// Remove takes the pod with this UID out of the set and calls OnRemove. When
// containerID is not empty and the enrolled pod has another one, the request
// is about an old sandbox and nothing happens. It returns whether a pod was
// removed; an OnRemove error is returned as a *HookError after the removal.
func (s *Server) Remove(ctx context.Context, uid, containerID string) (removed bool, err error) {
	if err := checkUID(uid); err != nil {
		return false, err
	}
	unlock := s.keys.lock(uid)
	defer unlock()
	s.mu.Lock()
	old, had := s.pods[uid]
	s.mu.Unlock()
	if !had {
		s.log.Debug("remove of an unknown pod", "uid", uid)
		return false, nil
	}
	if containerID != "" && old.ContainerID != "" && containerID != old.ContainerID {
		s.log.Info("ignoring remove of an old sandbox", "pod", old.Key(), "containerID", containerID,
			"enrolledContainerID", old.ContainerID)
		return false, nil
	}
	s.set(uid, nil)
	if err := s.persist(); err != nil {
		s.set(uid, &old)
		return false, err
	}
	s.log.Info("pod removed", "pod", old.Key())
	if err := s.callHook(ctx, "OnRemove", old); err != nil {
		return true, err
	}
	return true, nil
}

// Get returns the enrolled pod with this UID.
func (s *Server) Get(uid string) (Pod, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pods[uid]
	return p.clone(), ok
}

// Pods returns the enrolled pods sorted by namespace, name and UID.
func (s *Server) Pods() []Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedPods(s.pods)
}

// Resync replays OnAdd for every enrolled pod whose netns still is a network
// namespace, and drops (without OnRemove) those whose netns is gone. A pod
// whose OnAdd fails stays in the set, so a later Resync retries it; the
// failures are returned joined.
func (s *Server) Resync(ctx context.Context) error {
	var errs []error
	dropped := false
	for _, p := range s.Pods() {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := func() error {
			unlock := s.keys.lock(p.UID)
			defer unlock()
			cur, ok := s.Get(p.UID)
			if !ok || !cur.Equal(p) {
				return nil // changed by a request meanwhile
			}
			if err := checkNetns(p.NetnsPath, s.opts.HostProc); err != nil {
				s.log.Info("dropping pod whose netns is gone", "pod", p.Key(), "netns", p.NetnsPath, "reason", err)
				s.set(p.UID, nil)
				dropped = true
				return nil
			}
			if err := s.callHook(ctx, "OnAdd", p); err != nil {
				s.log.Warn("re-enrolment failed", "pod", p.Key(), "err", err)
				return err
			}
			s.log.Info("pod re-enrolled", "pod", p.Key())
			return nil
		}()
		if err != nil {
			errs = append(errs, err)
		}
	}
	if dropped {
		if err := s.persist(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// set stores pod under uid, or deletes uid when pod is nil.
func (s *Server) set(uid string, pod *Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pod == nil {
		delete(s.pods, uid)
		return
	}
	s.pods[uid] = *pod
}

// persist writes a snapshot taken after every mutation made so far.
func (s *Server) persist() error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	snap := make(map[string]Pod, len(s.pods))
	for k, v := range s.pods {
		snap[k] = v
	}
	s.mu.Unlock()
	return writeState(s.opts.StateFile, snap)
}

// callHook runs one hook with the hook timeout, turning a panic into an error.
func (s *Server) callHook(ctx context.Context, op string, pod Pod) (err error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.HookTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err = &HookError{Op: op, Pod: pod, Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	if op == "OnAdd" {
		err = s.hooks.OnAdd(ctx, pod.clone())
	} else {
		err = s.hooks.OnRemove(ctx, pod.clone())
	}
	if err != nil {
		return &HookError{Op: op, Pod: pod, Err: err}
	}
	return nil
}

// Listen creates the socket: in the socket's folder (created 0750 if
// missing) it listens on a temporary name, sets mode 0600 and renames it over
// SocketPath, which atomically replaces a stale socket. A file at SocketPath
// that is not a socket is an error.
func (s *Server) Listen() (net.Listener, error) {
	path := s.opts.SocketPath
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create socket folder: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("%s exists and is not a socket", path)
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".new")
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("chmod socket: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("install socket %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socketListener{UnixListener: ln, path: path, fi: fi}, nil
}

// socketListener removes its socket file on Close, unless another server has
// replaced it meanwhile.
type socketListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
	once sync.Once
}

// Addr returns the socket's final path.
func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close closes the listener and removes its socket file if it is still ours.
func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// Serve serves the API on ln until ctx ends, then shuts down gracefully
// (in-flight requests get up to HookTimeout to finish) and closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.opts.ReadTimeout,
		ReadTimeout:       s.opts.ReadTimeout,
		WriteTimeout:      s.opts.ReadTimeout + 2*s.opts.HookTimeout + 5*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.HookTimeout)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}()
	s.log.Info("enrolment API serving", "socket", ln.Addr().String(), "pods", len(s.Pods()))
	err := hs.Serve(ln)
	stop()
	<-done
	ln.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Run listens on SocketPath and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}
