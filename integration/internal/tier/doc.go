// Package tier decides what a test tier does when a prerequisite is missing:
// skip on a developer machine, fail under CI (CI=true), so that CI can never
// pass by skipping a tier.
package tier
