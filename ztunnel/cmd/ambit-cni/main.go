package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/ztunnel/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, cni.About())
}
