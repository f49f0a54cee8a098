package enroll

import (
	"errors"
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
func checkNetns(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return invalid("netnsPath %q does not exist", path)
		}
		return invalid("netnsPath %q: %v", path, err)
	}
	if uint32(st.Type) != unix.NSFS_MAGIC {
		return invalid("netnsPath %q is not a namespace file (filesystem type %#x, want nsfs)", path, st.Type)
	}
	// O_NONBLOCK: never block on a FIFO that replaced the file meanwhile.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return invalid("netnsPath %q: %v", path, err)
	}
	defer f.Close()
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil {
		// Kernels before 4.11 lack the ioctl; nsfs is good enough there.
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return nil
		}
		return invalid("netnsPath %q: %v", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		return invalid("netnsPath %q is a namespace but not a network namespace (type %#x)", path, typ)
	}
	return nil
}
