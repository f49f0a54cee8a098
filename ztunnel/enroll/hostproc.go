package enroll

import (
	"path/filepath"
	"strings"
)

// HostNetnsPath is where ztunnel opens the network namespace that a
// runtime named path. Runtimes without namespace files (cri-dockerd, for
// one) name a process's namespace, /proc/<pid>/ns/net, with the PID as the
// host sees it; a ztunnel in a PID namespace of its own reaches the host's
// processes through hostProc, the host's /proc mounted there. So with
// hostProc set a path under /proc/ is taken under hostProc; any other path,
// or any path when hostProc is empty, is opened as it is.
func HostNetnsPath(path, hostProc string) string {
	if hostProc == "" {
		return path
	}
	rest, ok := strings.CutPrefix(filepath.Clean(path), "/proc/")
	if !ok {
		return path
	}
	return filepath.Join(hostProc, rest)
}
