package enroll

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// nsGetNSType is the NS_GET_NSTYPE ioctl (_IO(0xb7, 0x3)): the CLONE_NEW*
// type of a namespace file descriptor (Linux 4.11+).
const nsGetNSType = 0xb703

// checkNetns reports whether path is a network namespace file: it must be on
// nsfs (NSFS_MAGIC), which bind-mounted namespaces (/var/run/netns/...) and
// /proc/PID/ns/net both are, and the kernel must call it a network namespace.
// A path under /proc/ is looked at through hostProc (HostNetnsPath).
func checkNetns(path, hostProc string) error {
	at := HostNetnsPath(path, hostProc)
	name := fmt.Sprintf("%q", path)
	if at != path {
		name = fmt.Sprintf("%q (at %s)", path, at)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(at, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return invalid("netnsPath %s does not exist", name)
		}
		return invalid("netnsPath %s: %v", name, err)
	}
	if uint32(st.Type) != unix.NSFS_MAGIC {
		return invalid("netnsPath %s is not a namespace file (filesystem type %#x, want nsfs)", name, st.Type)
	}
	// O_NONBLOCK: never block on a FIFO that replaced the file meanwhile.
	f, err := os.OpenFile(at, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return invalid("netnsPath %s: %v", name, err)
	}
	defer f.Close()
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil {
		// Kernels before 4.11 lack the ioctl; nsfs is good enough there.
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return nil
		}
		return invalid("netnsPath %s: %v", name, err)
	}
	if typ != unix.CLONE_NEWNET {
		return invalid("netnsPath %s is a namespace but not a network namespace (type %#x)", name, typ)
	}
	return nil
}
