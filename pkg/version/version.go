package version

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
)

// Version of this build; "dev" when not stamped.
var Version = "dev"

// String returns a one-line description of the build for component.
func String(component string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", component, Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// Placeholder is the main function of a binary whose behaviour has not been
// built yet: it answers -version, and otherwise says so and fails, so that
// nobody mistakes it for a working component.
func Placeholder(component, purpose string) {
	fs := flag.NewFlagSet(component, flag.ExitOnError)
	showVersion := fs.Bool("version", false, "print the version and exit")
	_ = fs.Parse(os.Args[1:])
	if *showVersion {
		fmt.Println(String(component))
		return
	}
	slog.Error("component not implemented yet; see docs/features.md", "component", component, "purpose", purpose)
	os.Exit(1)
}
