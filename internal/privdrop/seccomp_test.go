package privdrop

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const envProbe = "AGENTFENCE_SECCOMP_PROBE"

func TestMain(m *testing.M) {
	if os.Getenv(envProbe) != "" {
		for _, line := range socketProbes() {
			fmt.Println(line)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func errnoName(err error) string {
	var errno unix.Errno
	if err == nil {
		return "ok"
	}
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// socketProbes tries each socket the filter judges and reports the errno.
func socketProbes() []string {
	try := func(name string, family, typ, proto int) string {
		fd, err := unix.Socket(family, typ, proto)
		if err == nil {
			unix.Close(fd)
		}
		return name + "=" + errnoName(err)
	}
	out := []string{
		try("unix", unix.AF_UNIX, unix.SOCK_STREAM, 0),
		try("inet", unix.AF_INET, unix.SOCK_DGRAM, 0),
		try("inet6", unix.AF_INET6, unix.SOCK_STREAM, 0),
		try("netlink", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE),
		try("packet", unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))),
		try("xdp", unix.AF_XDP, unix.SOCK_RAW, 0),
		try("vsock", unix.AF_VSOCK, unix.SOCK_STREAM, 0),
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	out = append(out, "socketpair_unix="+errnoName(err))
	_, err = unix.Socketpair(unix.AF_PACKET, unix.SOCK_RAW, 0)
	out = append(out, "socketpair_packet="+errnoName(err))
	out = append(out, "seccomp_plain="+errnoName(allowAll(0)), "seccomp_listener="+errnoName(allowAll(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER)))
	params := make([]byte, 120) // struct io_uring_params
	r, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if errno == 0 {
		unix.Close(int(r))
		out = append(out, "io_uring=ok")
	} else {
		out = append(out, "io_uring="+unix.ErrnoName(errno))
	}
	return out
}

// allowAll installs a filter that allows everything, with flags, on the
// calling thread (no_new_privs set first, as run sets it).
func allowAll(flags uintptr) error {
	runtime.LockOSThread() // the thread exits with the probe
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	ins := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
	prog := unix.SockFprog{Len: 1, Filter: &ins[0]}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
	if errno != 0 {
		return errno
	}
	if flags&unix.SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
		unix.Close(int(r))
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// The filter refuses every socket family but the local ones with
// EAFNOSUPPORT, before any permission check, and io_uring with ENOSYS; the
// process that installed it on a thread of its own is untouched. No root
// needed: no_new_privs lets anyone install a filter.
func TestFilterKeepsToLocalFamilies(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envProbe+"=1")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := Start(cmd, Drops(nil)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("probe: %v: %s", err, stderr.String())
	}
	got := map[string]string{}
	for _, line := range strings.Fields(out.String()) {
		k, v, _ := strings.Cut(line, "=")
		got[k] = v
	}
	want := map[string]string{"unix": "ok", "inet": "ok", "inet6": "ok", "netlink": "ok",
		"packet": "EAFNOSUPPORT", "xdp": "EAFNOSUPPORT", "vsock": "EAFNOSUPPORT",
		"socketpair_unix": "ok", "socketpair_packet": "EAFNOSUPPORT", "io_uring": "ENOSYS",
		"seccomp_plain": "ok", "seccomp_listener": "EPERM"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %q, want %s", k, got[k], w)
		}
	}
	// Without the filter the kernel answers for itself: a packet socket is
	// created (root) or refused for lack of CAP_NET_RAW, never EAFNOSUPPORT,
	// and a listener is handed out.
	if err := probeListener(); err != nil {
		t.Errorf("without the filter, a seccomp listener: %v", err)
	}
	for _, line := range socketProbes() {
		if strings.HasPrefix(line, "packet=") && line == "packet=EAFNOSUPPORT" {
			t.Errorf("this process got %s: the filter leaked out of its thread", line)
		}
	}
}

// probeListener installs a listening filter on a thread of its own,
// which it then ends with.
func probeListener() error {
	res := make(chan error)
	go func() { res <- allowAll(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER) }() // the locked thread exits with it
	return <-res
}

// A syscall of an ABI the filter does not know kills the process, and the
// program only ever jumps forward within itself.
func TestFilterShape(t *testing.T) {
	ins, err := filter(machineABIs)
	if err != nil {
		t.Fatal(err)
	}
	if ins[len(ins)-1].Code != unix.BPF_RET|unix.BPF_K {
		t.Fatalf("the program does not end in a return")
	}
	for i, in := range ins {
		if in.Code&0x07 == unix.BPF_JMP && i+1+int(max(in.Jt, in.Jf)) >= len(ins) {
			t.Errorf("instruction %d jumps past the end", i)
		}
	}
	if ins[len(machineABIs)+1].K != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("an unknown arch is not killed: %+v", ins[len(machineABIs)+1])
	}
}
