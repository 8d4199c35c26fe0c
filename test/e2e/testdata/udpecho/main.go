// udpecho is the e2e tests' UDP server in a guest (busybox has none): it answers each
// datagram on the address in its argument with "re:" and the datagram.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: udpecho HOST:PORT")
		os.Exit(2)
	}
	pc, err := net.ListenPacket("udp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			os.Exit(1)
		}
		_, _ = pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
	}
}
