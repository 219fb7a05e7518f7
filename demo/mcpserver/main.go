// Command mcpserver is the demo's ticket MCP server, a native one: a stdio
// MCP server (the official Go SDK) with one tool, create_ticket, that posts
// to the SaaS API with the key it holds. Its agent launches it; agentfence
// binds it to the server's own session, whose scope reaches the API.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentfence/agentfence/demo/internal/saas"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mcpserver:", err)
		os.Exit(1)
	}
}

// run serves MCP on stdin and stdout until stdin ends; stdout carries only
// the protocol, so there is no stdout to write to.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", os.Getenv("API_URL"), "the SaaS API's tickets URL, http or https (default $API_URL)")
	var dial saas.Dial
	fs.StringVar(&dial.DNS, "dns", "", "DNS server (UDP) to resolve the API's name with (default the host's)")
	fs.StringVar(&dial.CA, "ca", "", "PEM certificates to trust for HTTPS (default the host's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *api == "" {
		return fmt.Errorf("no API URL: give --api or API_URL")
	}
	// The key comes from the environment: the command line is in every
	// audit record of the server's processes.
	key := os.Getenv("API_KEY")
	client, err := dial.Client()
	if err != nil {
		return err
	}

	server := mcp.NewServer(&mcp.Implementation{Name: "agentfence-demo-tickets", Version: "1.0.0"}, nil)
	type ticket struct {
		Title string `json:"title" jsonschema:"the ticket's title"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "create_ticket", Description: "Create a ticket in the SaaS tracker"},
		func(ctx context.Context, _ *mcp.CallToolRequest, t ticket) (*mcp.CallToolResult, any, error) {
			answer, err := saas.CreateTicket(ctx, client, *api, key, t.Title)
			if err != nil {
				// A tool error, not a protocol one: the agent sees why.
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: answer}}}, nil, nil
		})
	return server.Run(ctx, &mcp.StdioTransport{})
}
