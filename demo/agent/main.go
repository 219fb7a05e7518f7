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

	"github.com/agentfence/agentfence/demo/internal/saas"
)

func main() {
	mcp := flag.String("mcp", "https://tickets-mcp.demo.internal:18080/tools/tickets", "MCP server URL")
	api := flag.String("api", "https://api.saas.demo.internal:18443/v1/tickets", "SaaS API URL")
	apiAddr := flag.String("api-addr", "", "the SaaS API's address: try it without DNS too, as an agent that knows it would")
	resolver := flag.String("dns", "127.0.0.153:53", "DNS server (UDP) to resolve names with")
	caFile := flag.String("ca", "", "PEM certificates to trust for HTTPS")
	flag.Parse()
	client, err := saas.Dial{DNS: *resolver, CA: *caFile}.Client()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent: --ca:", err)
		os.Exit(2)
	}
	ok := call(client, "via the MCP server", *mcp)
	bypassed := call(client, "directly, bypassing the MCP server", *api)
	if *apiAddr != "" {
		// The session's DNS mode refuses the API's name; an agent that
		// knows the address skips DNS, and the connect itself is refused.
		byAddr, err := saas.Dial{Addr: *apiAddr, CA: *caFile}.Client()
		if err != nil {
			fmt.Fprintln(os.Stderr, "agent: --ca:", err)
			os.Exit(2)
		}
		bypassed = call(byAddr, "directly at "+*apiAddr+", without DNS", *api) || bypassed
	}
	if !ok || bypassed {
		os.Exit(1)
	}
}

func call(c *http.Client, how, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		fmt.Printf("agent: call %-36s %s\n       → FAILED: %v\n", how, url, err)
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	fmt.Printf("agent: call %-36s %s\n       → %s (%s)\n", how, url, resp.Status, strings.TrimSpace(string(body)))
	return true
}
