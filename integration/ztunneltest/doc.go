// Package ztunneltest runs ztunnel end to end in network namespaces (build
// tag `netns`, root): two lab nodes with one in-process ztunnel each, pods
// enrolled through the enrolment API, configuration from a real xDS server
// publishing a hand-built translation, and certificates from an in-process CA.
package ztunneltest
