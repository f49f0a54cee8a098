// Command ambit-cni is the chained CNI plugin that reports pods to the local
// ztunnel over its enrolment socket. The logic lives in package
// github.com/ambit-mesh/ambit/ztunnel/cni; see docs/reference/cni.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/ztunnel/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, cni.About())
}
