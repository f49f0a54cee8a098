package redirect

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flushConntrack empties the namespace's conntrack table (see Remove).
func flushConntrack(ns *Netns) error {
	h, err := ns.netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil && !errors.Is(err, unix.ENOENT) && !noFamily(err) {
		return fmt.Errorf("redirect: flush the conntrack table of %s: %w", ns, err)
	}
	return nil
}
