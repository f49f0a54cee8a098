// Command ztunnel is the per-node L4 tunnel: it captures enrolled pods' TCP
// and carries it in HBONE. See package daemon for what it does and
// docs/reference/ztunnel.md for its flags, ports and metrics.
package main
