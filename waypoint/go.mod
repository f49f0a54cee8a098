module github.com/ambit-mesh/ambit/waypoint

go 1.26.0

require (
	github.com/ambit-mesh/ambit/apis v0.0.0
	github.com/ambit-mesh/ambit/pkg v0.0.0
)

require google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af

replace (
	github.com/ambit-mesh/ambit/apis => ../apis
	github.com/ambit-mesh/ambit/pkg => ../pkg
)
