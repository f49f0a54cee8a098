// Package version reports the version of an Ambit binary. Version is set at
// link time by the Makefile (-X github.com/ambit-mesh/ambit/pkg/version.Version=...).
package version
