// Command ambitctl is the command-line tool for operating an Ambit mesh:
// check an installation, manage waypoints and look into a node's ztunnel.
// See docs/reference/ambitctl.md.
package main
