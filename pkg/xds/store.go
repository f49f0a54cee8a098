package xds

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protodelim"
)

// The state file holds one length-delimited DeltaDiscoveryResponse per type,
// listing every accepted resource of that type with its version.

// persist writes the accepted state to StateFile: a temporary file in the
// same folder, synced, then renamed over the old one, so a crash leaves
// either the old or the new state, never a torn one.
func (c *Client) persist() {
	if c.cfg.StateFile == "" {
		return
	}
	if err := c.writeState(); err != nil {
		c.log.Error("persist xds state", "file", c.cfg.StateFile, "err", err)
	}
}

func (c *Client) writeState() error {
	var buf bytes.Buffer
	c.mu.Lock()
	for _, t := range c.cfg.Types {
		msg := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: t.URL}
		for n, r := range c.state[t.URL] {
			msg.Resources = append(msg.Resources, &discoveryv3.Resource{Name: n, Version: r.version, Resource: r.body})
		}
		if _, err := protodelim.MarshalTo(&buf, msg); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()

	dir := filepath.Dir(c.cfg.StateFile)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(c.cfg.StateFile)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.cfg.StateFile)
}

// loadFromDisk reads StateFile and applies each subscribed type's resources.
// A missing file is normal on first start; a corrupt one is logged and
// ignored, and a type its handler rejects starts empty.
func (c *Client) loadFromDisk() {
	if c.cfg.StateFile == "" {
		return
	}
	msgs, err := readState(c.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		c.log.Error("ignoring unreadable xds state file", "file", c.cfg.StateFile, "err", err)
		return
	}
	loaded := 0
	for _, m := range msgs {
		h, ok := c.handler[m.GetTypeUrl()]
		if !ok {
			continue
		}
		rs := map[string]resource{}
		for _, r := range m.GetResources() {
			rs[r.GetName()] = resource{version: r.GetVersion(), body: r.GetResource()}
		}
		if err := h(bodies(rs)); err != nil {
			c.log.Error("handler rejected persisted xds state", "type", m.GetTypeUrl(), "err", err)
			continue
		}
		c.mu.Lock()
		c.state[m.GetTypeUrl()] = rs
		c.status.FromDisk = true
		c.markSyncedLocked(m.GetTypeUrl())
		c.mu.Unlock()
		loaded += len(rs)
	}
	c.log.Info("loaded xds state from disk", "file", c.cfg.StateFile, "resources", loaded)
}

func readState(path string) ([]*discoveryv3.DeltaDiscoveryResponse, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out []*discoveryv3.DeltaDiscoveryResponse
	for {
		m := new(discoveryv3.DeltaDiscoveryResponse)
		err := protodelim.UnmarshalFrom(r, m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", len(out)+1, err)
		}
		out = append(out, m)
	}
}
