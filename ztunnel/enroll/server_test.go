package enroll

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Hooks that records its calls and can be told to fail.
type recorder struct {
	mu      sync.Mutex
	adds    []Pod
	removes []Pod
	addErr  error
}

func (r *recorder) OnAdd(_ context.Context, p Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addErr != nil {
		return r.addErr
	}
	r.adds = append(r.adds, p)
	return nil
}

func (r *recorder) OnRemove(_ context.Context, p Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removes = append(r.removes, p)
	return nil
}

func (r *recorder) counts() (adds, removes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.adds), len(r.removes)
}

func (r *recorder) setAddErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addErr = err
}

// testServer is a running server on a socket in a temporary folder.
type testServer struct {
	srv    *Server
	client *Client
	hooks  *recorder
	opts   Options
	stop   func()
}

// startServer starts a server in dir (a new temporary folder when empty).
func startServer(t *testing.T, dir string, mod func(*Options)) *testServer {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	rec := &recorder{}
	opts := Options{
		SocketPath: filepath.Join(dir, "ztunnel.sock"),
		StateFile:  filepath.Join(dir, "state", "pods.json"),
		Hooks:      rec,
		Logger:     slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&opts)
	}
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &testServer{srv: srv, client: NewClient(opts.SocketPath), hooks: rec, opts: opts, stop: stop}
}

// selfNetns is a network namespace file any user may open.
const selfNetns = "/proc/self/ns/net"

func podReq(uid string) AddPodRequest {
	return AddPodRequest{
		UID: uid, Namespace: "default", Name: "pod-" + uid, ContainerID: "c-" + uid,
		NetnsPath: selfNetns, PodIPs: []string{"10.250.1.2", "fd00::2"}, NodeIPs: []string{"10.250.1.1"},
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantAPIError checks that err is an APIError with this code and a message
// containing substr.
func wantAPIError(t *testing.T, err error, code, substr string) {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v, want an APIError %s", err, code)
	}
	if ae.Code != code || !strings.Contains(ae.Message, substr) {
		t.Fatalf("error = %s %q, want %s containing %q", ae.Code, ae.Message, code, substr)
	}
}

// statePods reads the state file.
func statePods(t *testing.T, path string) []Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("state file: %v", err)
	}
	return st.Pods
}

func TestAddValidation(t *testing.T) {
	ts := startServer(t, "", nil)
	regular := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		mod  func(*AddPodRequest)
		want string
	}{
		{"missing uid", func(r *AddPodRequest) { r.UID = "" }, "uid is required"},
		{"slash in uid", func(r *AddPodRequest) { r.UID = "a/b" }, "must not contain"},
		{"missing namespace", func(r *AddPodRequest) { r.Namespace = "" }, "namespace is required"},
		{"missing name", func(r *AddPodRequest) { r.Name = "" }, "name is required"},
		{"missing netns", func(r *AddPodRequest) { r.NetnsPath = "" }, "netnsPath is required"},
		{"relative netns", func(r *AddPodRequest) { r.NetnsPath = "proc/self/ns/net" }, "absolute path"},
		{"netns does not exist", func(r *AddPodRequest) { r.NetnsPath = "/var/run/netns/ambit-no-such-ns" }, "does not exist"},
		{"netns is a regular file", func(r *AddPodRequest) { r.NetnsPath = regular }, "is not a namespace file"},
		{"netns is another namespace type", func(r *AddPodRequest) { r.NetnsPath = "/proc/self/ns/uts" }, "not a network namespace"},
		{"malformed pod IP", func(r *AddPodRequest) { r.PodIPs = []string{"10.250.1.2", "10.250.1.x"} }, `podIPs[1]: "10.250.1.x" is not an IP address`},
		{"no pod IP", func(r *AddPodRequest) { r.PodIPs = nil }, "at least one pod IP"},
		{"duplicate pod IP", func(r *AddPodRequest) { r.PodIPs = []string{"10.0.0.1", "10.0.0.1"} }, "listed twice"},
		{"unspecified pod IP", func(r *AddPodRequest) { r.PodIPs = []string{"0.0.0.0"} }, "not a usable unicast"},
		{"malformed node IP", func(r *AddPodRequest) { r.NodeIPs = []string{"node"} }, `nodeIPs[0]: "node"`},
		{"space in name", func(r *AddPodRequest) { r.Name = "a b" }, "contains a space"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := podReq("u1")
			tc.mod(&req)
			_, err := ts.client.AddPod(ctxT(t), req)
			wantAPIError(t, err, CodeInvalidArgument, tc.want)
			var ae *APIError
			if errors.As(err, &ae) && ae.Status != 400 {
				t.Errorf("status %d, want 400", ae.Status)
			}
		})
	}
	if a, r := ts.hooks.counts(); a != 0 || r != 0 {
		t.Errorf("hooks called %d/%d times for invalid requests", a, r)
	}
	if pods := ts.srv.Pods(); len(pods) != 0 {
		t.Errorf("pods = %v", pods)
	}
}

func TestAddIdempotentAndReplace(t *testing.T) {
	ts := startServer(t, "", nil)
	ctx := ctxT(t)
	req := podReq("u1")
	resp, err := ts.client.AddPod(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Changed || resp.Pod.UID != "u1" || resp.Pod.PodIPs[1] != netip.MustParseAddr("fd00::2") {
		t.Fatalf("first add = %+v", resp)
	}
	resp, err = ts.client.AddPod(ctx, req)
	if err != nil || resp.Changed {
		t.Fatalf("repeat add = %+v, %v; want unchanged", resp, err)
	}
	if a, r := ts.hooks.counts(); a != 1 || r != 0 {
		t.Fatalf("hooks after repeat add: %d adds, %d removes; want 1, 0", a, r)
	}

	// A new sandbox of the same pod: another netns path and container ID.
	req2 := req
	req2.NetnsPath = "/proc/thread-self/ns/net"
	req2.ContainerID = "c-new"
	resp, err = ts.client.AddPod(ctx, req2)
	if err != nil || !resp.Changed {
		t.Fatalf("replacing add = %+v, %v", resp, err)
	}
	if a, r := ts.hooks.counts(); a != 2 || r != 1 {
		t.Fatalf("hooks after replace: %d adds, %d removes; want 2, 1", a, r)
	}
	if got := ts.hooks.removes[0].NetnsPath; got != selfNetns {
		t.Errorf("OnRemove got netns %q, want the old %q", got, selfNetns)
	}
	pods, err := ts.client.ListPods(ctx)
	if err != nil || len(pods) != 1 || pods[0].NetnsPath != req2.NetnsPath {
		t.Fatalf("list = %+v, %v", pods, err)
	}
	got, err := ts.client.GetPod(ctx, "u1")
	if err != nil || got.ContainerID != "c-new" || got.Namespace != "default" {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if st := statePods(t, ts.opts.StateFile); len(st) != 1 || st[0].ContainerID != "c-new" {
		t.Fatalf("state = %+v", st)
	}
}

func TestRemove(t *testing.T) {
	ts := startServer(t, "", nil)
	ctx := ctxT(t)
	rr, err := ts.client.RemovePod(ctx, "unknown", "")
	if err != nil || rr.Removed {
		t.Fatalf("remove unknown = %+v, %v; want a no-op", rr, err)
	}
	if _, err := ts.client.AddPod(ctx, podReq("u1")); err != nil {
		t.Fatal(err)
	}
	rr, err = ts.client.RemovePod(ctx, "u1", "c-old-sandbox")
	if err != nil || rr.Removed {
		t.Fatalf("remove of an old sandbox = %+v, %v; want a no-op", rr, err)
	}
	rr, err = ts.client.RemovePod(ctx, "u1", "c-u1")
	if err != nil || !rr.Removed {
		t.Fatalf("remove = %+v, %v", rr, err)
	}
	if a, r := ts.hooks.counts(); a != 1 || r != 1 {
		t.Fatalf("hooks: %d adds, %d removes; want 1, 1", a, r)
	}
	if _, err := ts.client.GetPod(ctx, "u1"); !IsNotFound(err) {
		t.Fatalf("get after remove: %v, want not found", err)
	}
	if st := statePods(t, ts.opts.StateFile); len(st) != 0 {
		t.Fatalf("state after remove = %+v", st)
	}
	rr, err = ts.client.RemovePod(ctx, "u1", "")
	if err != nil || rr.Removed {
		t.Fatalf("second remove = %+v, %v", rr, err)
	}
}

func TestOnAddErrorPropagates(t *testing.T) {
	ts := startServer(t, "", nil)
	ctx := ctxT(t)
	ts.hooks.setAddErr(errors.New("cannot install nftables rules: boom"))
	_, err := ts.client.AddPod(ctx, podReq("u1"))
	wantAPIError(t, err, CodeAddFailed, "cannot install nftables rules: boom")
	if !strings.Contains(err.Error(), "default/pod-u1") {
		t.Errorf("error %q does not name the pod", err)
	}
	if pods := ts.srv.Pods(); len(pods) != 0 {
		t.Fatalf("failed pod kept: %+v", pods)
	}
	if st := statePods(t, ts.opts.StateFile); len(st) != 0 {
		t.Fatalf("failed pod persisted: %+v", st)
	}
	ts.hooks.setAddErr(nil)
	if resp, err := ts.client.AddPod(ctx, podReq("u1")); err != nil || !resp.Changed {
		t.Fatalf("retry = %+v, %v", resp, err)
	}
}

func TestHookPanicIsAnError(t *testing.T) {
	ts := startServer(t, "", func(o *Options) {
		o.Hooks = HookFuncs{Add: func(context.Context, Pod) error { panic("bad hook") }}
	})
	_, err := ts.client.AddPod(ctxT(t), podReq("u1"))
	wantAPIError(t, err, CodeAddFailed, "panic: bad hook")
}

// sleeper starts a process and returns its netns path and a function that
// ends it, after which the path no longer exists.
func sleeper(t *testing.T) (string, func()) {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	return fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), kill
}

func TestPersistenceAndResync(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	ts := startServer(t, dir, nil)
	gonePath, kill := sleeper(t)
	if _, err := ts.client.AddPod(ctx, podReq("stays")); err != nil {
		t.Fatal(err)
	}
	goes := podReq("goes")
	goes.NetnsPath = gonePath
	if _, err := ts.client.AddPod(ctx, goes); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	if _, err := os.Stat(ts.opts.SocketPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	kill() // the second pod's netns disappears while ztunnel is down

	ts2 := startServer(t, dir, nil)
	if pods := ts2.srv.Pods(); len(pods) != 2 {
		t.Fatalf("loaded %d pods, want 2: %+v", len(pods), pods)
	}
	if a, _ := ts2.hooks.counts(); a != 0 {
		t.Fatalf("NewServer called OnAdd %d times", a)
	}
	if err := ts2.srv.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ts2.hooks.adds) != 1 || ts2.hooks.adds[0].UID != "stays" {
		t.Fatalf("resync replayed %+v, want only the pod whose netns exists", ts2.hooks.adds)
	}
	if len(ts2.hooks.removes) != 0 {
		t.Errorf("resync called OnRemove: %+v", ts2.hooks.removes)
	}
	pods, err := ts2.client.ListPods(ctx)
	if err != nil || len(pods) != 1 || pods[0].UID != "stays" {
		t.Fatalf("list after resync = %+v, %v", pods, err)
	}
	if st := statePods(t, ts2.opts.StateFile); len(st) != 1 || st[0].UID != "stays" {
		t.Fatalf("state after resync = %+v", st)
	}
	// The replayed pod is the persisted one, addresses included.
	want, _ := podReq("stays").ToPod()
	if !ts2.hooks.adds[0].Equal(want) {
		t.Errorf("replayed %+v, want %+v", ts2.hooks.adds[0], want)
	}
}

func TestResyncKeepsFailedPods(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	ts := startServer(t, dir, nil)
	if _, err := ts.client.AddPod(ctx, podReq("u1")); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	ts2 := startServer(t, dir, nil)
	ts2.hooks.setAddErr(errors.New("transient"))
	if err := ts2.srv.Resync(ctx); err == nil || !strings.Contains(err.Error(), "transient") {
		t.Fatalf("resync error = %v, want the hook's", err)
	}
	if len(ts2.srv.Pods()) != 1 {
		t.Fatal("a pod whose OnAdd failed during resync was dropped")
	}
	ts2.hooks.setAddErr(nil)
	if err := ts2.srv.Resync(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptStateIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "pods.json")
	if err := os.WriteFile(state, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Options{SocketPath: filepath.Join(dir, "s.sock"), StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Pods()) != 0 {
		t.Fatal("pods from a corrupt state file")
	}
	aside, _ := filepath.Glob(state + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("corrupt file not moved aside: %v", aside)
	}
}

func TestConcurrentAdds(t *testing.T) {
	ts := startServer(t, "", nil)
	ctx := ctxT(t)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, 3*n)
	for i := range n {
		for range 3 { // the same pod three times at once: one OnAdd
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := podReq(fmt.Sprintf("u%02d", i))
				req.PodIPs = []string{fmt.Sprintf("10.250.1.%d", i+2)}
				if _, err := ts.client.AddPod(ctx, req); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a, _ := ts.hooks.counts(); a != n {
		t.Errorf("OnAdd called %d times, want %d", a, n)
	}
	if pods := ts.srv.Pods(); len(pods) != n {
		t.Errorf("%d pods enrolled, want %d", len(pods), n)
	}
	if st := statePods(t, ts.opts.StateFile); len(st) != n {
		t.Errorf("%d pods persisted, want %d", len(st), n)
	}
}

func TestOversizedRequestRejected(t *testing.T) {
	ts := startServer(t, "", func(o *Options) { o.MaxRequestBytes = 1024 })
	req := podReq("u1")
	req.Name = strings.Repeat("x", 4096)
	_, err := ts.client.AddPod(ctxT(t), req)
	wantAPIError(t, err, CodeTooLarge, "larger than 1024 bytes")
	var ae *APIError
	if errors.As(err, &ae) && ae.Status != 413 {
		t.Errorf("status %d, want 413", ae.Status)
	}
}

func TestMalformedAndUnknownRequests(t *testing.T) {
	ts := startServer(t, "", nil)
	ctx := ctxT(t)
	for _, tc := range []struct {
		method, path string
		body         any
		code         string
	}{
		{"POST", "/v1/pods", "just a string", CodeInvalidArgument},
		{"PUT", "/v1/pods", podReq("u1"), CodeMethodNotAllowed},
		{"POST", "/v1/pods/u1", nil, CodeMethodNotAllowed},
		{"GET", "/v2/whatever", nil, CodeNotFound},
	} {
		err := ts.client.do(ctx, tc.method, tc.path, tc.body, &struct{}{})
		wantAPIError(t, err, tc.code, "")
	}
}

func TestClientUnreachable(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "nobody.sock"))
	_, err := c.AddPod(ctxT(t), podReq("u1"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error = %v, want ErrUnavailable", err)
	}
}

func TestSocketModeAndStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "ztunnel.sock")
	// A stale socket left by a crashed ztunnel.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ts := startServer(t, dir, nil)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want a socket with 0600", fi.Mode())
	}
	if _, err := ts.client.ListPods(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	// A file that is not a socket is never replaced.
	other := filepath.Join(t.TempDir(), "ztunnel.sock")
	if err := os.WriteFile(other, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Options{SocketPath: other, StateFile: filepath.Join(dir, "p.json")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
}
