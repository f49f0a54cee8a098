package enroll

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// stateVersion is the version of the state file's format.
const stateVersion = 1

// stateFile is the JSON document persisted at Options.StateFile.
type stateFile struct {
	Version int   `json:"version"`
	Pods    []Pod `json:"pods"`
}

// loadState reads the state file. A missing file is an empty set. A file
// that cannot be parsed is moved aside (path + ".corrupt-<unix time>") and
// reported, so that ztunnel still starts.
func loadState(path string) (map[string]Pod, error) {
	pods := map[string]Pod{}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return pods, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil || st.Version != stateVersion {
		if err == nil {
			err = fmt.Errorf("unsupported version %d", st.Version)
		}
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("state file %s is unreadable (%v) and cannot be moved aside: %w", path, err, rerr)
		}
		return pods, &corruptStateError{path: path, aside: aside, err: err}
	}
	for _, p := range st.Pods {
		if p.UID == "" {
			continue
		}
		pods[p.UID] = p
	}
	return pods, nil
}

// corruptStateError reports a state file that was moved aside.
type corruptStateError struct {
	path, aside string
	err         error
}

func (e *corruptStateError) Error() string {
	return fmt.Sprintf("state file %s is unreadable (%v); moved to %s, starting with no pods", e.path, e.err, e.aside)
}

// writeState writes pods to path atomically: a temporary file in the same
// folder, fsync, rename over path, fsync of the folder.
func writeState(path string, pods map[string]Pod) error {
	st := stateFile{Version: stateVersion, Pods: sortedPods(pods)}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create state folder: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// sortedPods returns copies of the pods sorted by namespace, name, UID.
func sortedPods(pods map[string]Pod) []Pod {
	out := make([]Pod, 0, len(pods))
	for _, p := range pods {
		out = append(out, p.clone())
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.UID < b.UID
	})
	return out
}

// keyedMutex serialises work per key; different keys do not contend.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks key and returns its unlock function.
func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyLock{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
