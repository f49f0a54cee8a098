// Package tunneltest holds tests that combine Ambit's identity and HBONE
// libraries the way the data planes do: certificates from a Manager, rotated
// under live tunnels.
package tunneltest
