//go:build netns && race

package meshtest

// raceEnabled is true when the test runs with -race: the binaries under test
// are then built with -race too, so a data race in the controller or ztunnel
// under real traffic fails the test (see process.stop and raceReports).
const raceEnabled = true
