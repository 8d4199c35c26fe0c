// Command banger-agent is the guest agent: an HTTP API (health, exec, files, power) over
// AF_VSOCK or a virtio-serial port. It runs as root in the guest, started by banger-init
// or by the systemd unit banger-init writes. Build it static: CGO_ENABLED=0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentserver"
	"github.com/banger-vm/banger/internal/buildinfo"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("banger-agent", flag.ContinueOnError)
	transport := fs.String("transport", "vsock", "host channel: vsock or serial")
	port := fs.Uint("port", agent.DefaultVsockPort, "AF_VSOCK port to listen on (--transport vsock)")
	portName := fs.String("port-name", agent.DefaultSerialPortName, "virtio-serial port name (--transport serial)")
	debug := fs.Bool("debug", false, "log debug messages")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Println("banger-agent", buildinfo.Version())
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "banger-agent: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *transport != "vsock" && *transport != "serial" {
		fmt.Fprintf(os.Stderr, "banger-agent: --transport %q: want vsock or serial\n", *transport)
		return 2
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv := agentserver.New(agentserver.Config{Version: buildinfo.Version(), Logger: log})
	log.Info("banger-agent starting", "version", buildinfo.Version(), "transport", *transport, "pid", os.Getpid())

	var err error
	switch *transport {
	case "vsock":
		if *port == 0 || *port > 1<<32-1 {
			fmt.Fprintf(os.Stderr, "banger-agent: --port %d is not a vsock port\n", *port)
			return 2
		}
		ln, lerr := agentserver.ListenVsock(ctx, uint32(*port), log)
		if lerr != nil {
			if ctx.Err() != nil {
				return 0
			}
			log.Error("cannot listen on vsock", "err", lerr)
			return 1
		}
		log.Info("serving on vsock", "port", *port)
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		err = srv.Serve(ln)
	case "serial":
		log.Info("serving on virtio-serial", "port_name", *portName)
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		err = srv.ServeSerial(ctx, agentserver.SerialPortOpener(*portName))
	default:
		fmt.Fprintf(os.Stderr, "banger-agent: --transport %q: want vsock or serial\n", *transport)
		return 2
	}
	if err != nil && ctx.Err() == nil {
		log.Error("banger-agent stopped", "err", err)
		return 1
	}
	log.Info("banger-agent stopped")
	return 0
}
