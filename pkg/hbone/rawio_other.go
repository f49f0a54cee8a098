//go:build !linux

package hbone

import "net"

type rawReader struct{}

func (*rawReader) Read([]byte) (int, error) { panic("unreachable") }

func newRawReader(net.Conn) *rawReader { return nil }

type rawWriter struct{}

func (*rawWriter) tryWrite([]byte) int { return 0 }

func (*rawWriter) Write([]byte) (int, error) { panic("unreachable") }

func newRawWriter(net.Conn) *rawWriter { return nil }

func sinkFor(net.Conn, func(int)) *rawWriter { return nil }
