package cli_test

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// peerListenerMain is the test binary run as another user by TestCLIRefusesDaemonOfAnotherUser
// (BANGER_TEST_PEER_LISTENER=1): fd 3 is a Unix socket the test bound; listening on it here
// makes this user its SO_PEERCRED. It prints "ready", then whatever each client sends.
func peerListenerMain() {
	if err := syscall.Listen(3, 8); err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	ln, err := net.FileListener(os.NewFile(3, "socket"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listener:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
		}
		buf := make([]byte, 64<<10)
		n, _ := c.Read(buf)
		if n > 0 {
			// Written before the hang-up, so the test reads it once this process is gone.
			fmt.Printf("received %d bytes: %q\n", n, buf[:n])
		}
		_ = c.Close()
	}
}
