package cluster

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// ComponentStatus is one process of the cluster.
type ComponentStatus struct {
	Name    string
	PID     int
	Running bool
	// RSSKiB is the resident memory of the process (0 when not running).
	RSSKiB int64
	// Health is "ok" or why the health probe failed ("" when not running).
	Health string
}

// Status is a snapshot of the cluster.
type Status struct {
	Components []ComponentStatus
	// Pods are the RSS of the pods' processes (kubepods cgroups) and of the
	// containerd shims, which are not cluster components but run for it.
	PodsRSSKiB, ShimsRSSKiB int64
	Kubeconfig              string
}

// Up reports whether every component runs and answers its health probe.
func (s Status) Up() bool {
	for _, c := range s.Components {
		if !c.Running || c.Health != "ok" {
			return false
		}
	}
	return len(s.Components) > 0
}

// ComponentsRSSKiB is the sum of the components' resident memory.
func (s Status) ComponentsRSSKiB() int64 {
	var n int64
	for _, c := range s.Components {
		n += c.RSSKiB
	}
	return n
}

// Print writes the status as a table.
func (s Status) Print(w io.Writer) {
	fmt.Fprintf(w, "%-24s %8s %-8s %10s  %s\n", "COMPONENT", "PID", "STATE", "RSS MiB", "HEALTH")
	for _, c := range s.Components {
		state := "stopped"
		if c.Running {
			state = "running"
		}
		fmt.Fprintf(w, "%-24s %8d %-8s %10.1f  %s\n", c.Name, c.PID, state, float64(c.RSSKiB)/1024, c.Health)
	}
	fmt.Fprintf(w, "%-24s %8s %-8s %10.1f\n", "total (components)", "", "", float64(s.ComponentsRSSKiB())/1024)
	fmt.Fprintf(w, "%-24s %8s %-8s %10.1f\n", "pods", "", "", float64(s.PodsRSSKiB)/1024)
	fmt.Fprintf(w, "%-24s %8s %-8s %10.1f\n", "containerd shims", "", "", float64(s.ShimsRSSKiB)/1024)
	if s.Up() {
		fmt.Fprintf(w, "up; export KUBECONFIG=%s\n", s.Kubeconfig)
	} else {
		fmt.Fprintln(w, "not up")
	}
}

// Status reports each component's process, memory and health. It needs no
// lock and changes nothing.
func (c *Cluster) Status(ctx context.Context) (Status, error) {
	if err := c.findBinaries(); err != nil {
		return Status{}, err
	}
	st := Status{Kubeconfig: c.p.Kubeconfig}
	for _, comp := range c.components() {
		cs := ComponentStatus{Name: comp.name}
		if id, err := readPidFile(c.pidFile(comp.name)); err == nil {
			cs.PID = id.PID
			if id.alive() {
				cs.Running = true
				cs.RSSKiB, _ = rssKiB(id.PID)
				if err := c.probe(ctx, comp); err != nil {
					cs.Health = oneLine(err.Error())
				} else {
					cs.Health = "ok"
				}
			}
		}
		st.Components = append(st.Components, cs)
	}
	for _, pid := range cgroupPIDs(cgroupDirs(cgroupRoots())) {
		n, _ := rssKiB(pid)
		st.PodsRSSKiB += n
	}
	for _, pid := range shimsOf(c.p.ContainerdSock) {
		n, _ := rssKiB(pid)
		st.ShimsRSSKiB += n
	}
	return st, nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}
