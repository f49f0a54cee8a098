//go:build !unix

package hbone

import "net"

type rawWriter struct{}

func (*rawWriter) tryWrite([]byte) int { return 0 }

func sinkFor(net.Conn) *rawWriter { return nil }
