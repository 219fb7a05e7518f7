// Command standin is a tiny HTTP server for the demo: it stands in for a
// local MCP server or for a SaaS API, on a loopback address.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:18080", "loopback address to listen on")
	name := flag.String("name", "mcp-server", "what this stands in for")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s: 3 open tickets\n", *name)
	})}
	go func() { <-ctx.Done(); srv.Close() }()
	slog.Info("standin listening", "name", *name, "addr", l.Addr().String())
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}
