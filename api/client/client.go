// Package client is the local API's client, for the agentfence CLI and
// launchers; it links none of the daemon.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"

	v1 "github.com/agentfence/agentfence/api/v1"
)

// Client talks to agentfenced over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Open opens a session.
func (c *Client) Open(ctx context.Context, req v1.OpenRequest) (v1.Session, error) {
	var s v1.Session
	return s, c.do(ctx, http.MethodPost, "/v1/sessions", req, &s)
}

// List lists the open sessions matching the query filters (state, origin,
// agent, parent, label=key=value).
func (c *Client) List(ctx context.Context, filters url.Values) ([]v1.Session, error) {
	var s []v1.Session
	path := "/v1/sessions"
	if len(filters) > 0 {
		path += "?" + filters.Encode()
	}
	return s, c.do(ctx, http.MethodGet, path, nil, &s)
}

// Bind binds a process or a container to a session.
func (c *Client) Bind(ctx context.Context, id string, req v1.BindRequest) (v1.Session, error) {
	var s v1.Session
	return s, c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(id)+"/bind", req, &s)
}

// Narrow narrows a session's scope.
func (c *Client) Narrow(ctx context.Context, id string, req v1.NarrowRequest) (v1.Session, error) {
	var s v1.Session
	return s, c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(id)+"/narrow", req, &s)
}

// Revoke revokes a session.
func (c *Client) Revoke(ctx context.Context, id string) (v1.Session, error) {
	var s v1.Session
	return s, c.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(id)+"/revoke", struct{}{}, &s)
}

// Get returns one session.
func (c *Client) Get(ctx context.Context, id string) (v1.Session, error) {
	var s v1.Session
	return s, c.do(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(id), nil, &s)
}

// Close closes a session.
func (c *Client) Close(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sessions/"+url.PathEscape(id), nil, nil)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agentfenced"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("agentfenced is not running (no API at %s): start it with `sudo agentfenced`", c.socket)
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("no permission to use %s: the API is for root and configured callers", c.socket)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Error *v1.Error `json:"error"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e); err != nil || e.Error == nil {
			return fmt.Errorf("agentfenced: %s", resp.Status)
		}
		return e.Error
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
