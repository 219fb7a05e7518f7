package kerneltest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The operations on things other than the network: another process's
// memory, the network namespace, the daemon's API.

func (o VMRead) run(c *child) { c.report(o.probe()) }
func (o Netns) run(c *child)  { c.report(o.probe()) }
func (o API) run(c *child)    { c.report(o.probe()) }

func (o VMRead) probe() Result {
	buf := make([]byte, 8)
	_, err := unix.ProcessVMReadv(o.PID, []unix.Iovec{{Base: &buf[0], Len: 8}}, []unix.RemoteIovec{{Base: 8, Len: 8}}, 0)
	return result(err)
}

// probe leaves the network namespace and comes back, on a locked thread
// that exits with its goroutine: the other threads never move.
func (Netns) probe() Result {
	res := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- err
			return
		}
		res <- unix.Setns(fd, unix.CLONE_NEWNET)
	}()
	return result(<-res)
}

// probe calls the API; a connect that failed is its errno.
func (o API) probe() Result {
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", o.Socket)
	}}, Timeout: 10 * time.Second}
	var resp *http.Response
	var err error
	if o.Open {
		resp, err = c.Post("http://agentfenced/v1/sessions", "application/json",
			strings.NewReader(`{"intent":"widen","scope":["0.0.0.0/0"]}`))
	} else {
		resp, err = c.Get("http://agentfenced/v1/sessions")
	}
	if err != nil {
		return result(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error struct{ Field string } `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	return Result{Err: OK, Status: resp.StatusCode, Field: body.Error.Field}
}
