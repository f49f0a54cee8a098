// Package cniinstall chains Ambit's CNI plugin (ambit-cni) into the node's
// existing CNI configuration, keeps it chained, and removes it again.
//
// ztunnel runs it when -cni-bin-dir and -cni-conf-dir are set (the
// Kubernetes DaemonSet): the plugin binary is copied atomically into the bin
// folder, and an {"type":"ambit-cni",...} entry is appended to the plugins of
// the configuration file the container runtime uses, which is the first
// *.conf, *.conflist or *.json file of the conf folder in lexical order. A
// single-plugin .conf (or .json) is converted into a .conflist, the original
// being kept inside the new file so that Uninstall can restore it exactly.
// Writes are atomic (temporary file and rename) and idempotent: a file that
// already holds the wanted entry is not written.
//
// Run re-checks every PollInterval, so an entry dropped by another agent
// that rewrote the file, or a new earlier file, is chained again; until the
// node has a CNI configuration at all, Ready reports why ztunnel is not
// ready. Uninstall removes the entry from every file that holds one
// (leaving the other plugins as they were), restores converted files and
// removes the binary.
package cniinstall
