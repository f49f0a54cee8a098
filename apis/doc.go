// Package apis is Ambit's versioned contract: the Go types of its CRDs
// (security.ambit.dev, traffic.ambit.dev) with their generated deepcopy code and
// CRD YAML, and the protobuf contracts between the controller and the data
// planes. It has light dependencies only, so every other module can import it.
package apis
