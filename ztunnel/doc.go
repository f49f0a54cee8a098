// Package ztunnel is the root of the ztunnel module; its binaries live under cmd/.
package ztunnel
