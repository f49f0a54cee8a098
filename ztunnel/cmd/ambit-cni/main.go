// Command ambit-cni is the chained CNI plugin that reports pods to the local ztunnel.
package main

import "github.com/ambit-mesh/ambit/pkg/version"

func main() {
	version.Placeholder("ambit-cni", "is the chained CNI plugin that reports pods to the local ztunnel")
}
