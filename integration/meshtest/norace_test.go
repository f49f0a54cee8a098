//go:build netns && !race

package meshtest

const raceEnabled = false
