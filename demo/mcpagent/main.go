// Command mcpagent is the demo's "AI agent" with a real MCP server: it
// launches the server over stdio (the official Go SDK), has it create a
// ticket, and then tries the same API call itself with the same key, as an
// agent that holds the server's environment could.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentfence/agentfence/demo/internal/saas"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mcpagent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpagent [flags] -- SERVER [ARG ...]   (the key is $API_KEY, which the server inherits)")
		fs.PrintDefaults()
	}
	api := fs.String("api", "https://api.saas.demo.internal:18443/v1/tickets", "the SaaS API's tickets URL, for the direct call")
	title := fs.String("title", "printer on floor 3 is on fire", "the ticket to create")
	var direct saas.Dial
	fs.StringVar(&direct.Addr, "api-addr", "", "the API's address: the direct call dials it, needing no DNS")
	fs.StringVar(&direct.CA, "ca", "", "PEM certificates to trust for HTTPS")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no server command")
	}
	key := os.Getenv("API_KEY")

	answer, toolErr := viaServer(ctx, fs.Args(), *title, stderr)
	report(stdout, "create_ticket through its MCP server, over stdio", fs.Arg(0), answer, toolErr)

	client, err := direct.Client()
	if err != nil {
		return err
	}
	answer, directErr := saas.CreateTicket(ctx, client, *api, key, *title)
	report(stdout, "POST directly, with the server's key", *api, answer, directErr)
	switch {
	case toolErr != nil:
		return errors.New("the server could not create the ticket")
	case directErr == nil:
		return errors.New("the direct call got through")
	}
	return nil
}

// viaServer launches the server, calls its create_ticket tool and returns
// the tool's text.
func viaServer(ctx context.Context, argv []string, title string, stderr io.Writer) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stderr = stderr
	client := mcp.NewClient(&mcp.Implementation{Name: "agentfence-demo-agent", Version: "1.0.0"}, nil)
	session, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		return "", err
	}
	defer session.Close()
	res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: "create_ticket", Arguments: map[string]any{"title": title}})
	if err != nil {
		return "", err
	}
	var text []string
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			text = append(text, t.Text)
		}
	}
	if res.IsError {
		return "", errors.New(strings.Join(text, "; "))
	}
	return strings.Join(text, "\n"), nil
}

func report(w io.Writer, how, where, answer string, err error) {
	if err != nil {
		fmt.Fprintf(w, "agent: %-50s %s\n       → FAILED: %v\n", how, where, err)
		return
	}
	fmt.Fprintf(w, "agent: %-50s %s\n       → %s\n", how, where, answer)
}
