// Command controller is Ambit's control plane: Kubernetes watcher, translator, xDS server and mesh CA.
package main

import "github.com/ambit-mesh/ambit/pkg/version"

func main() {
	version.Placeholder("controller", "is Ambit's control plane: Kubernetes watcher, translator, xDS server and mesh CA")
}
