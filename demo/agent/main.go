// Command agent is the demo's "AI agent": it asks its MCP server for data,
// then tries to skip the MCP server and call the SaaS API directly with a raw
// key, as an agent holding credentials could.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	mcp := flag.String("mcp", "http://127.0.0.1:18080/tools/tickets", "MCP server URL")
	api := flag.String("api", "http://127.0.0.2:18443/v1/tickets", "SaaS API URL")
	flag.Parse()
	client := &http.Client{Timeout: 5 * time.Second}
	ok := call(client, "via the MCP server", *mcp)
	bypassed := call(client, "directly, bypassing the MCP server", *api)
	if !ok || bypassed {
		os.Exit(1)
	}
}

func call(c *http.Client, how, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		fmt.Printf("agent: call %-36s %s → FAILED: %v\n", how, url, err)
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	fmt.Printf("agent: call %-36s %s → %s (%s)\n", how, url, resp.Status, strings.TrimSpace(string(body)))
	return true
}
