package main

import "github.com/ambit-mesh/ambit/pkg/version"

func main() {
	version.Placeholder("ambitctl", "is the command-line tool for operating an Ambit mesh")
}
