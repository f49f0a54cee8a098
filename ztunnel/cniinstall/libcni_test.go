package cniinstall

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// TestRuntimeReadsResult: the files ztunnel writes are what libcni (which
// containerd and CRI-O use to load the configuration) accepts, with
// ambit-cni last, and ztunnel picks the file libcni's listing puts first.
func TestRuntimeReadsResult(t *testing.T) {
	e := newEnv(t)
	e.write(t, "30-mynet.conf", bridgeConf)
	e.write(t, "99-last.conflist", bridgeList)
	e.write(t, "notes.txt", "x")

	files, err := libcni.ConfFiles(e.conf, []string{".conf", ".conflist", ".json"})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	ours, err := configFiles(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(ours) || filepath.Base(files[0]) != ours[0] {
		t.Fatalf("libcni lists %v, ztunnel %v", files, ours)
	}

	e.reconcile(t, true)
	list, err := libcni.ConfListFromFile(filepath.Join(e.conf, "30-mynet.conflist"))
	if err != nil {
		t.Fatalf("libcni rejects the converted list: %v", err)
	}
	if list.Name != "mynet" || list.CNIVersion != "0.4.0" || len(list.Plugins) != 2 ||
		list.Plugins[0].Network.Type != "bridge" || list.Plugins[1].Network.Type != PluginType {
		t.Fatalf("libcni reads %+v", list)
	}

	// Now the chained conflist case.
	if err := os.Remove(filepath.Join(e.conf, "30-mynet.conflist")); err != nil {
		t.Fatal(err)
	}
	e.reconcile(t, true)
	list, err = libcni.ConfListFromFile(filepath.Join(e.conf, "99-last.conflist"))
	if err != nil {
		t.Fatalf("libcni rejects the chained list: %v", err)
	}
	if n := len(list.Plugins); n != 3 || list.Plugins[n-1].Network.Type != PluginType {
		t.Fatalf("libcni reads %d plugins", n)
	}
}
