// Command ztunnel is the per-node L4 tunnel: it captures enrolled pods' TCP and carries it in HBONE.
package main

import "github.com/ambit-mesh/ambit/pkg/version"

func main() {
	version.Placeholder("ztunnel", "is the per-node L4 tunnel: it captures enrolled pods' TCP and carries it in HBONE")
}
