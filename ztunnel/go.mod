module github.com/ambit-mesh/ambit/ztunnel

go 1.26.0

require (
	github.com/ambit-mesh/ambit/pkg v0.0.0
	github.com/containernetworking/cni v1.3.0
	github.com/google/nftables v0.3.0
	github.com/mdlayher/netlink v1.7.3-0.20250113171957-fbb4dce95f42
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	golang.org/x/sys v0.48.0
)

require (
	github.com/google/go-cmp v0.6.0 // indirect
	github.com/mdlayher/socket v0.5.0 // indirect
	golang.org/x/net v0.55.0 // indirect
	golang.org/x/sync v0.6.0 // indirect
)

replace (
	github.com/ambit-mesh/ambit/apis => ../apis
	github.com/ambit-mesh/ambit/pkg => ../pkg
)
