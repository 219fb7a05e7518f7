// Package e2e runs the built daemon and CLI as a user would: agentfenced
// with a private socket and audit file, agentfence run around real
// processes, on the real kernel.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

func TestMain(m *testing.M) {
	kerneltest.MaybeRunProbe()
	os.Exit(m.Run())
}

var binDir string

// build compiles the binaries once per test binary run.
func build(t testing.TB) string {
	t.Helper()
	if binDir != "" {
		return binDir
	}
	// make vmtest runs this package in VMs without a Go toolchain build:
	// it points here at agentfenced and agentfence built on the host.
	if dir := os.Getenv("AGENTFENCE_E2E_BIN"); dir != "" {
		binDir = dir
		return dir
	}
	dir, err := os.MkdirTemp("", "agentfence-e2e-bin")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/agentfenced", "../cmd/agentfence").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	binDir = dir
	return dir
}

type daemon struct {
	bin, socket, audit string
	args               []string
	// preexisting are session cgroups that were there before this daemon
	// (another agentfenced on the host): not this test's to clean up.
	preexisting map[string]bool
	cmd         *exec.Cmd
	stderr      *bytes.Buffer
}

// configFile writes a daemon config (YAML) for one test and returns its
// path, for --config.
func configFile(tb testing.TB, yaml string) string {
	tb.Helper()
	cfg := filepath.Join(tb.TempDir(), "agentfence.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

func startDaemon(t testing.TB, extra ...string) *daemon {
	t.Helper()
	privtest.RequireRoot(t)
	bin := build(t)
	dir := t.TempDir()
	d := &daemon{bin: bin, socket: filepath.Join(dir, "api.sock"), audit: filepath.Join(dir, "audit.jsonl"), stderr: &bytes.Buffer{}}
	d.args = append([]string{"--api-socket", d.socket, "--audit-file", d.audit, "--state-dir", filepath.Join(dir, "state"),
		"--bpffs-path", "", "--metrics-addr", "127.0.0.1:0"}, extra...)
	d.preexisting = map[string]bool{}
	for _, name := range sessionCgroups() {
		d.preexisting[name] = true
	}
	d.start(t)
	t.Cleanup(func() { d.stop(t) })
	return d
}

// sessionCgroups lists the session cgroups on the host.
func sessionCgroups() []string {
	root, _ := cgroupv2.Root()
	entries, _ := os.ReadDir(filepath.Join(root, "agentfence"))
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// start starts the daemon and waits until its API listens.
func (d *daemon) start(t testing.TB) {
	t.Helper()
	d.stderr = &bytes.Buffer{}
	d.cmd = exec.Command(filepath.Join(d.bin, "agentfenced"), d.args...)
	d.cmd.Stderr = &lockedWriter{w: d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Loading and verifying the programs takes 10-30 s under emulation
	// (make vmtest); a daemon that exits instead is seen at once.
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(d.log(), "api listening") {
		if exited(d.cmd.Process.Pid) {
			t.Fatalf("daemon exited before its API listened: %s", d.log())
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start: %s", d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exited reports whether the child pid has exited (a zombie not yet
// waited for), without reaping it.
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised comm, which may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z'
}

// log is what the daemon has written to stderr so far.
func (d *daemon) log() string {
	w := d.cmd.Stderr.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return d.stderr.String()
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *daemon) stop(t testing.TB) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("daemon exit: %v\n%s", err, d.log())
	}
}

// cli runs agentfence and returns stdout, stderr and the exit code.
func (d *daemon) cli(t testing.TB, env []string, args ...string) (string, string, int) {
	t.Helper()
	if len(args) > 0 && (args[0] == "run" || args[0] == "session") {
		args = append([]string{args[0], "--socket", d.socket}, args[1:]...)
		if args[0] == "session" {
			args = append([]string{"session", args[3]}, append([]string{"--socket", d.socket}, args[4:]...)...)
		}
	}
	cmd := exec.Command(filepath.Join(d.bin, "agentfence"), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// records reads the records in the audit file. Only complete lines are
// records: bytes after the last '\n' are a line the daemon is writing (or
// one torn by a kill -9, which the next daemon cuts off before it appends).
func (d *daemon) records(t *testing.T) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(d.audit)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	for _, line := range completeLines(data) {
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// completeLines splits data into its '\n'-terminated lines, without the
// '\n', leaving out an unterminated rest.
func completeLines(data []byte) [][]byte {
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	if len(data) == 0 {
		return nil
	}
	return bytes.Split(data[:len(data)-1], []byte("\n"))
}

func TestRunAllowsScopeAndRecordsDecisions(t *testing.T) {
	d := startDaemon(t)
	allowed := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	other := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")

	stdout, stderr, code := d.cli(t, kerneltest.Env(t, kerneltest.Options{}, kerneltest.Connect{Addr: allowed}, kerneltest.Connect{Addr: other}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.53:53")}),
		"run", "--intent", "read tickets", "--allow", "tcp://"+allowed.String(), "--", os.Args[0])
	if code != 0 {
		t.Fatalf("run exit %d: %s", code, stderr)
	}
	res, err := kerneltest.ParseResults(stdout)
	if err != nil || !slices.Equal(kerneltest.Outcomes(res), []string{"ok", "EPERM", "EPERM"}) {
		t.Fatalf("results %q (%v)", stdout, err)
	}
	pid := res[0].PID

	// Records reach the file asynchronously; closed is the session's last.
	d.waitRecord(t, "closed", func(r audit.Record) bool { return r.Kind == audit.KindSession && r.Event == "closed" })
	recs := d.records(t)
	var opened, closed, allowedRec, deniedRec *audit.Record
	for i := range recs {
		r := &recs[i]
		switch {
		case r.Kind == "session" && r.Event == "opened":
			opened = r
		case r.Kind == "session" && r.Event == "closed":
			closed = r
		case r.Kind == "connect" && r.Outcome.Verdict == "allowed":
			allowedRec = r
		case r.Kind == "connect" && r.Outcome.Verdict == "denied":
			deniedRec = r
		}
	}
	if opened == nil || closed == nil || allowedRec == nil || deniedRec == nil {
		t.Fatalf("missing records: %+v", recs)
	}
	for i := range recs {
		if &recs[i] == closed && i != len(recs)-1 {
			t.Errorf("closed is not the last record of the session; after it: %+v", recs[i+1:])
		}
	}
	for _, r := range []*audit.Record{allowedRec, deniedRec} {
		if r.Session.ID != opened.Session.ID || r.Session.Intent != "read tickets" || int(r.Process.PID) != pid ||
			r.Process.Comm == "" || r.Destination.Protocol != "tcp" || time.Since(r.Time) > time.Minute || time.Since(r.Time) < 0 {
			t.Errorf("record not attributed: %+v %+v %+v", r.Session, r.Process, r.Destination)
		}
	}
	if allowedRec.Destination.IP != "127.0.0.1" || allowedRec.Destination.Port != allowed.Port() || allowedRec.Outcome.Rule != "tcp://"+allowed.String() {
		t.Errorf("allowed record: %+v %+v", allowedRec.Destination, allowedRec.Outcome)
	}
	if deniedRec.Destination.Port != other.Port() || deniedRec.Outcome.Rule != "" || deniedRec.Outcome.Errno != "EPERM" {
		t.Errorf("denied record: %+v %+v", deniedRec.Destination, deniedRec.Outcome)
	}
	var sendmsg bool
	for _, r := range recs {
		sendmsg = sendmsg || (r.Kind == "sendmsg" && r.Destination.Protocol == "udp" && r.Destination.Port == 53 && r.Outcome.Verdict == "denied")
	}
	if !sendmsg {
		t.Errorf("no denied sendmsg record")
	}
	d.expectClean(t)
}

// expectClean checks that no session, session cgroup or scope is left.
func (d *daemon) expectClean(t *testing.T) {
	t.Helper()
	out, stderr, code := d.cli(t, nil, "session", "list", "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("sessions left: %s %s", out, stderr)
	}
	for _, name := range sessionCgroups() {
		if !d.preexisting[name] {
			t.Errorf("session cgroup left behind: %s", name)
		}
	}
}

func TestRunExitStatusAndDaemonizedDescendants(t *testing.T) {
	d := startDaemon(t)
	if _, _, code := d.cli(t, nil, "run", "--intent", "x", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit status %d, want 7", code)
	}
	if _, _, code := d.cli(t, nil, "run", "--intent", "x", "--", "sh", "-c", "kill -TERM $$"); code != 128+15 {
		t.Errorf("killed command: exit status %d, want 143", code)
	}
	// The command exits at once; its double-forked descendant probes later
	// and must still be in the session, and run must wait for it.
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	env := kerneltest.Env(t, kerneltest.Options{Depth: 2, Detach: true}, kerneltest.Connect{Addr: ln})
	stdout, stderr, code := d.cli(t, env, "run", "--intent", "daemon", "--allow", "udp://127.0.0.53:53", "--", os.Args[0])
	if res := stdoutOutcomes(stdout); code != 0 || !slices.Equal(res, []string{"EPERM"}) {
		t.Fatalf("daemonized probe: exit %d, out %q, err %q", code, stdout, stderr)
	}
	d.expectClean(t)
}

func TestRunRejectsBadInputAndChangesNothing(t *testing.T) {
	d := startDaemon(t)
	cases := []struct {
		args []string
		msg  string
	}{
		{[]string{"run", "--intent", "x", "--allow", "127.0.0.1:99999", "--", "true"}, "out of range"},
		{[]string{"run", "--intent", "x", "--allow", "10.0.0.1/8", "--", "true"}, "host bits"},
		{[]string{"run", "--intent", "x", "--allow", "api..example.com:443", "--", "true"}, "api..example.com"},
		{[]string{"run", "--intent", "x", "--allow", "*.com:443", "--", "true"}, "*.com"},
		{[]string{"run", "--intent", "  ", "--", "true"}, "--intent is required"},
		{[]string{"run", "--intent", "x", "--mode", "yolo", "--", "true"}, `--mode "yolo"`},
		{[]string{"run", "--intent", "x", "--ttl", "-5m", "--", "true"}, "must be positive"},
		{[]string{"run", "--intent", "x", "--ttl", "forever", "--", "true"}, "invalid value"},
		{[]string{"run", "--intent", "x"}, "no command"},
		{[]string{"bogus"}, "unknown command"},
	}
	for _, c := range cases {
		_, stderr, code := d.cli(t, nil, c.args...)
		if code != 2 || !strings.Contains(stderr, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, stderr, c.msg)
		}
	}
	// Checked only by the daemon: TTL above its maximum.
	_, stderr, code := d.cli(t, nil, "run", "--intent", "x", "--ttl", "1000h", "--", "true")
	if code != 125 || !strings.Contains(stderr, "ttl: 1000h0m0s is above the maximum") {
		t.Errorf("ttl above max: exit %d, %q", code, stderr)
	}
	d.expectClean(t)

	_, stderr, code = d.cli(t, nil, "run", "--socket", "/nonexistent/api.sock", "--intent", "x", "--", "true")
	if code != 125 || !strings.Contains(stderr, "agentfenced is not running") {
		t.Errorf("no daemon: exit %d, %q", code, stderr)
	}
}

func TestAPIRefusesUntrustedCallers(t *testing.T) {
	d := startDaemon(t)
	nobody := kerneltest.Options{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Binary: kerneltest.ExecutableCopy(t)}
	// The socket is 0600: nobody cannot even connect.
	list := kerneltest.API{Socket: d.socket}
	if res := kerneltest.Run(t, "", nobody, list); res[0].Outcome() != "EACCES" {
		t.Errorf("nobody on a 0600 socket: %s", res[0].Outcome())
	}
	// Even with the socket opened up, the peer credential check refuses.
	if err := os.Chmod(d.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	for dir := filepath.Dir(d.socket); dir != os.TempDir(); dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if res := kerneltest.Run(t, "", nobody, list); res[0].Err != kerneltest.OK || res[0].Status != 403 {
		t.Errorf("nobody through a 0666 socket: %s %d", res[0], res[0].Status)
	}
	if res := kerneltest.Run(t, "", kerneltest.Options{}, list); res[0].Err != kerneltest.OK || res[0].Status != 200 {
		t.Errorf("root: %s %d", res[0], res[0].Status)
	}
	// A process inside a session, even root, cannot open another session
	// to widen its own scope: it may only open children within its own.
	stdout, _, _ := d.cli(t, kerneltest.Env(t, kerneltest.Options{}, kerneltest.API{Socket: d.socket, Open: true}),
		"run", "--intent", "agent", "--allow", "udp://127.0.0.53:53", "--", os.Args[0])
	if res, err := kerneltest.ParseResults(stdout); err != nil || len(res) != 1 || res[0].Err != kerneltest.OK ||
		res[0].Status != 400 || res[0].Field != "scope[0]" {
		t.Errorf("session member widening its scope: %q (%v)", stdout, err)
	}
	d.expectClean(t)
}

// SIGTERM detaches every program the daemon attached.
func TestDaemonDetachesOnSIGTERM(t *testing.T) {
	privtest.RequireRoot(t)
	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatal(err)
	}
	before := kerneltest.Attached(t, root)
	d := startDaemon(t)
	if got := kerneltest.Attached(t, root); got != before+1 {
		t.Fatalf("connect4 programs at the root: %d with the daemon, %d before", got, before)
	}
	d.stop(t)
	if got := kerneltest.Attached(t, root); got != before {
		t.Errorf("connect4 programs after SIGTERM: %d, want %d", got, before)
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}
