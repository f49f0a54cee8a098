//go:build !linux

package enroll

// checkNetns fails: network namespaces exist only on Linux.
func checkNetns(path, _ string) error {
	return invalid("netnsPath %q: network namespaces need Linux", path)
}
