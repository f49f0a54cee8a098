// Command ambit-cni is the chained CNI plugin that reports pods to the local
// ztunnel over its enrolment socket. The logic lives in package
// github.com/ambit-mesh/ambit/ztunnel/cni; see docs/reference/cni.md.
package main
