package localmode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// DefaultDebounce is how long the folder must be quiet before a reload.
const DefaultDebounce = 200 * time.Millisecond

// LoadFunc parses one file's multi-document YAML; translate.LoadInput is one.
type LoadFunc func(yamlBytes []byte) (translate.Input, error)

// Config configures Run.
type Config struct {
	// Dir is the folder of YAML files. Required.
	Dir string
	// Load parses one file. Required (translate.LoadInput).
	Load LoadFunc
	// Pipeline translates and publishes. Required.
	Pipeline *pipeline.Pipeline
	// Debounce; zero means DefaultDebounce.
	Debounce time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnReload, if set, is called after every reload attempt with its error
	// (nil when the new configuration was published). For tests.
	OnReload func(error)
}

// FileError names the file that failed to load.
type FileError struct {
	File string
	Err  error
}

func (e *FileError) Error() string { return fmt.Sprintf("%s: %v", e.File, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }

// LoadDir reads every *.yaml and *.yml file directly in dir (sorted by name,
// hidden files skipped) with load and merges the objects into one Input. The
// first file that fails is reported as a *FileError.
func LoadDir(dir string, load LoadFunc) (translate.Input, error) {
	var in translate.Input
	entries, err := os.ReadDir(dir)
	if err != nil {
		return in, err
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !isYAML(name) {
			continue
		}
		if e.IsDir() {
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return translate.Input{}, &FileError{File: path, Err: err}
		}
		part, err := load(data)
		if err != nil {
			return translate.Input{}, &FileError{File: path, Err: err}
		}
		appendInput(&in, part)
	}
	return in, nil
}

func isYAML(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

// appendInput appends every slice of src to the same slice of dst.
func appendInput(dst *translate.Input, src translate.Input) {
	d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src)
	for i := range d.NumField() {
		if f := d.Field(i); f.Kind() == reflect.Slice {
			f.Set(reflect.AppendSlice(f, s.Field(i)))
		}
	}
}

// Run loads the folder, publishes, and reloads on every change until ctx
// ends. A load error at start is logged like any other: the xDS server then
// has nothing to serve until the files are fixed. Run fails only if the
// folder cannot be watched.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Dir == "" || cfg.Load == nil || cfg.Pipeline == nil {
		return errors.New("localmode: Dir, Load and Pipeline are required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", cfg.Dir, err)
	}
	defer w.Close()
	if err := w.Add(cfg.Dir); err != nil {
		return fmt.Errorf("watch %s: %w", cfg.Dir, err)
	}
	log.InfoContext(ctx, "local mode: reading Kubernetes objects from a folder", "dir", cfg.Dir)

	reload := func() {
		err := reloadOnce(ctx, cfg, log)
		if cfg.OnReload != nil {
			cfg.OnReload(err)
		}
	}
	reload()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			log.DebugContext(ctx, "local mode: folder changed", "event", ev.String())
			timer.Reset(cfg.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.WarnContext(ctx, "local mode: watch error", "dir", cfg.Dir, "error", err)
			timer.Reset(cfg.Debounce) // events may have been lost: reload
		case <-timer.C:
			reload()
		}
	}
}

func reloadOnce(ctx context.Context, cfg Config, log *slog.Logger) error {
	in, err := LoadDir(cfg.Dir, cfg.Load)
	if err != nil {
		var fe *FileError
		file := cfg.Dir
		if errors.As(err, &fe) {
			file = fe.File
		}
		log.ErrorContext(ctx, "local mode: cannot load configuration; keeping the last good one",
			"file", file, "error", err)
		return err
	}
	out, err := cfg.Pipeline.Run(ctx, in)
	if err != nil {
		return err // logged by the pipeline
	}
	log.InfoContext(ctx, "local mode: configuration published", "dir", cfg.Dir,
		"workloads", len(out.Workloads), "services", len(out.Services),
		"authorizations", len(out.Authorizations), "waypoints", len(out.Waypoints))
	return nil
}
