module github.com/ambit-mesh/ambit/waypoint

go 1.26.0

require github.com/ambit-mesh/ambit/pkg v0.0.0

replace (
	github.com/ambit-mesh/ambit/apis => ../apis
	github.com/ambit-mesh/ambit/pkg => ../pkg
)
