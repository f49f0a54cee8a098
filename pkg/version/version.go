package version

import (
	"fmt"
	"runtime"
)

// Version of this build; "dev" when not stamped.
var Version = "dev"

// String returns a one-line description of the build for component.
func String(component string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", component, Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
