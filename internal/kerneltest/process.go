package kerneltest

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The operations on things other than the network: another process's
// memory, the network namespace, the daemon's API.

func (o VMRead) run(c *child)     { c.report(o.probe()) }
func (o Traceme) run(c *child)    { c.report(o.probe()) }
func (o RecvSocket) run(c *child) { c.report(o.probe()) }
func (o Netns) run(c *child)      { c.report(o.probe()) }
func (o API) run(c *child)        { c.report(o.probe()) }

func (o VMRead) probe() Result {
	buf := make([]byte, 8)
	_, err := unix.ProcessVMReadv(o.PID, []unix.Iovec{{Base: &buf[0], Len: 8}}, []unix.RemoteIovec{{Base: 8, Len: 8}}, 0)
	return result(err)
}

func (Traceme) probe() Result {
	// The tracer is the thread that forked; it stays this one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		return result(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return result(nil)
}

func (o RecvSocket) probe() Result {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: o.Unix}); err != nil {
		return failed("connect", err)
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return failed("recvmsg", err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		if fds, err := unix.ParseUnixRights(&m); err == nil && len(fds) > 0 {
			for _, f := range fds {
				unix.Close(f)
			}
			return result(nil)
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return Result{Err: ErrNoRights}
	}
	return failed("recvmsg", errors.New("no descriptor and no MSG_CTRUNC"))
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
