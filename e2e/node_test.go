package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentfence/agentfence/audit"
	"github.com/agentfence/agentfence/config"
	"github.com/agentfence/agentfence/enforcer"
	"github.com/agentfence/agentfence/internal/cgroupv2"
	"github.com/agentfence/agentfence/internal/kerneltest"
	"github.com/agentfence/agentfence/internal/privtest"
)

// A kill -9 of the daemon while a member loops on allowed and denied
// connects: the pinned gate keeps deciding, a new daemon adopts it, and not
// one allowed connect fails nor one denied connect succeeds.
func TestRestartWithoutEnforcementGap(t *testing.T) {
	mnt := privtest.BPFFS(t)
	pins := filepath.Join(mnt, "agentfence")
	root, _ := cgroupv2.Root()
	before := kerneltest.Attached(t, root)

	// The loop's thousands of denials would use up any violation budget.
	d := startDaemon(t, "--bpffs-path", pins, "--config", configFile(t, "sessions:\n  drift_action: none\n"))
	allowed := kerneltest.Serve(t, "127.0.0.1:0")
	denied := kerneltest.Serve(t, "127.0.0.1:0")
	s := d.openSession(t, "--intent", "loop through a restart", "--allow", "tcp://"+allowed.String())
	stop := filepath.Join(t.TempDir(), "stop")
	p := kerneltest.Start(t, s.Binding.Cgroup, kerneltest.Options{}, false, kerneltest.Loop{Allowed: allowed, Denied: denied, Stop: stop})
	d.waitRecord(t, "connect", func(r audit.Record) bool { return r.Kind == audit.KindConnect && r.Session.ID == s.ID })

	d.cmd.Process.Kill()
	d.cmd.Wait()
	// Nobody is in user space now; the loop goes on against the pins.
	seen := len(d.records(t))
	d.start(t)
	if got := kerneltest.Attached(t, root); got != before+1 {
		t.Errorf("connect4 programs after the restart: %d, want %d (adopted, not doubled)", got, before+1)
	}
	out, _, _ := d.cli(t, nil, "session", "show", "--socket", d.socket, s.ID)
	if !strings.Contains(out, s.ID) {
		t.Errorf("session not adopted: %s", out)
	}
	d.waitRecord(t, "adopted", func(r audit.Record) bool { return r.Kind == audit.KindSession && r.Event == "adopted" })
	// Events resume: connect records written by the new daemon.
	deadline := time.Now().Add(15 * time.Second)
	for n := 0; n == 0; {
		for _, r := range d.records(t)[seen:] {
			if r.Kind == audit.KindConnect && r.Session.ID == s.ID {
				n++
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no connect records after the restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	os.WriteFile(stop, nil, 0o600)
	res := p.Next()
	a, af, dd, df := loopCounts(t, res)
	t.Logf("through the restart: %s %v, first failure %q", res, res.Tallies, res.FirstErr)
	if a == 0 || df == 0 || af != 0 || dd != 0 {
		t.Errorf("allowed ok %d, allowed failed %d, denied succeeded %d, denied refused %d", a, af, dd, df)
	}

	// SIGTERM with pins leaves the gate in place; --uninstall removes it.
	d.stop(t)
	// The trail across the kill is one unbroken chain (read once the daemon
	// has stopped writing: a line being written is not a record yet).
	if out, stderr, code := d.cli(t, nil, "audit", "verify", d.audit); code != 0 {
		t.Errorf("audit trail across the restart: %s%s", out, stderr)
	}
	if got := kerneltest.Attached(t, root); got != before+1 {
		t.Errorf("after SIGTERM with pins: %d connect4 programs, want %d", got, before+1)
	}
	un := exec.Command(filepath.Join(d.bin, "agentfenced"), append(d.args, "--uninstall")...)
	if out, err := un.CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if got := kerneltest.Attached(t, root); got != before {
		t.Errorf("after --uninstall: %d connect4 programs, want %d", got, before)
	}
	if entries, _ := os.ReadDir(pins); len(entries) != 0 {
		t.Errorf("pins left after --uninstall: %v", entries)
	}
}

// metricsBase is the daemon's metrics listener, http://ADDR, once its log
// names it.
func (d *daemon) metricsBase(t testing.TB) string {
	t.Helper()
	re := regexp.MustCompile(`metrics listening" addr=(\S+)`)
	var m []string
	waitFor(t, "the metrics address in the log", func() bool { m = re.FindStringSubmatch(d.log()); return m != nil })
	return "http://" + m[1]
}

// Metrics after a known sequence of decisions, and the health endpoints.
func TestMetricsAndHealth(t *testing.T) {
	d := startDaemon(t)
	base := d.metricsBase(t)
	s := d.openSession(t, "--intent", "counted", "--allow", "udp://127.0.0.1:9")
	expectResults(t, kerneltest.Run(t, s.Binding.Cgroup, kerneltest.Options{},
		kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:9")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:9")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:10")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:11")}, kerneltest.SendUDP{Addr: netip.MustParseAddrPort("127.0.0.1:12")}), "ok", "ok", "EPERM", "EPERM", "EPERM")
	want := map[string]float64{
		`agentfence_decisions_total{verdict="allowed"}`:      2,
		`agentfence_decisions_total{verdict="denied"}`:       3,
		`agentfence_decisions_total{verdict="would_deny"}`:   0,
		`agentfence_violations_total`:                        3,
		`agentfence_sessions{state="active"}`:                1,
		`agentfence_bpf_map_entries{map="sessions"}`:         1,
		`agentfence_bpf_map_entries{map="cgroup_sessions"}`:  1,
		`agentfence_bpf_map_capacity{map="sessions"}`:        config.MaxSessionsLimit + 1,
		`agentfence_kernel_events_lost_total{source="gate"}`: 0,
	}
	got := scrape(t, base+"/metrics")
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for _, k := range []string{`agentfence_sink_records_delivered_total{sink="primary"}`, `agentfence_processes_cached`} {
		if got[k] <= 0 {
			t.Errorf("%s = %v, want > 0", k, got[k])
		}
	}
	if !hasPrefix(got, "agentfence_build_info{") {
		t.Error("no agentfence_build_info")
	}
	// One path per optional kernel feature, and on a kernel new enough the
	// preferred one: a fallback there is a bug (docs/kernels.md).
	paths := map[string]string{"hostnames": "cgroup_skb", "pid_members": "task_iterator",
		"socket_naming": "task_file_iterator", "process_identity": "raw_tracepoints"}
	for feature, preferred := range paths {
		n := 0
		for k, v := range got {
			if strings.HasPrefix(k, `agentfence_kernel_path{feature="`+feature+`"`) && v == 1 {
				n++
			}
		}
		if n != 1 {
			t.Errorf("agentfence_kernel_path for %s: %d paths set, want 1", feature, n)
		}
		k := `agentfence_kernel_path{feature="` + feature + `",path="` + preferred + `"}`
		if got[k] != 1 && !privtest.KernelBefore(6, 1) {
			t.Errorf("%s = %v, want 1 on this kernel", k, got[k])
		}
	}
	// Socket families: the BPF LSM where the kernel runs it and has BPF
	// trampolines (not every build does), fmod_ret where it has them
	// without the BPF LSM, the syscall exit elsewhere; never none.
	var set []string
	for _, layer := range []enforcer.FamilyLayer{enforcer.FamiliesLSM, enforcer.FamiliesFmodRet, enforcer.FamiliesSyscallExit} {
		if got[`agentfence_kernel_path{feature="socket_families",path="`+string(layer)+`"}`] == 1 {
			set = append(set, string(layer))
		}
	}
	if len(set) != 1 {
		t.Errorf("agentfence_kernel_path for socket_families: %v set; want one layer", set)
	}
	for k := range got {
		if strings.Contains(k, "session=") || strings.Contains(k, "pid=") {
			t.Errorf("per-session or per-pid label: %s", k)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, resp, err)
		} else {
			resp.Body.Close()
		}
	}
}

func scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func hasPrefix(m map[string]float64, p string) bool {
	for k := range m {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// An exe-bound rule admits the named binary and refuses a copy of it under
// another path, decided in the kernel from the identity captured at exec.
func TestExeBoundRule(t *testing.T) {
	d := startDaemon(t)
	ln := kerneltest.Listen(t, "tcp4", "127.0.0.1:0")
	named, copied := kerneltest.ExecutableCopy(t), kerneltest.ExecutableCopy(t)
	rule := fmt.Sprintf("exe=%s,tcp://%s", named, ln)
	for _, c := range []struct{ bin, want string }{{named, "ok"}, {copied, "EPERM"}} {
		stdout, stderr, _ := d.cli(t, kerneltest.Env(t, kerneltest.Options{}, kerneltest.Connect{Addr: ln}), "run", "--intent", "mcp only", "--allow", rule, "--", c.bin)
		if res := stdoutOutcomes(stdout); !slices.Equal(res, []string{c.want}) {
			t.Errorf("%s: %q (%s), want %s", c.bin, stdout, stderr, c.want)
		}
	}
}

// Every one of 10,000 short-lived processes in a session is attributed
// with its executable, arguments, parent and session, although each is
// gone within a millisecond of its connect. Its arguments are on its
// record or, since schema 2, on its exec record before it.
func TestShortLivedProcessesAttributed(t *testing.T) {
	d := startDaemon(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "blip.c")
	bin := filepath.Join(dir, "blip")
	os.WriteFile(src, []byte(`#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	return sendto(fd, "x", 1, 0, (struct sockaddr *)&a, sizeof a) == 1 ? 0 : 1;
}
`), 0o644)
	if out, err := exec.Command("cc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	n := privtest.Rounds(10000)
	loop := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do %s 9 $i || exit 1; i=$((i+1)); done`, n, bin)
	if _, stderr, code := d.cli(t, nil, "run", "--intent", "many helpers", "--allow", "udp://127.0.0.1:9", "--", "sh", "-c", loop); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	seen := map[string]bool{}
	var partial int
	// A record without argv has it in the latest record of its pid that
	// does, before it in the trail (audit.md, "Process details").
	argvOf := map[uint32][]string{}
	for _, r := range d.records(t) {
		if r.Process != nil && len(r.Process.Argv) > 0 {
			argvOf[r.Process.PID] = r.Process.Argv
		}
		if r.Kind != audit.KindSendmsg || r.Process == nil || r.Process.Comm != "blip" {
			continue
		}
		argv := argvOf[r.Process.PID]
		if r.Process.Exe != bin || len(argv) != 3 || r.Process.PPID == 0 || r.Session == nil || r.Session.Intent != "many helpers" ||
			r.Outcome.Verdict != "allowed" {
			if partial++; partial <= 3 {
				t.Logf("incomplete: %+v %+v %+v", r.Process, r.Session, r.Outcome)
			}
			continue
		}
		seen[argv[2]] = true
	}
	if len(seen) != n || partial != 0 {
		t.Errorf("%d of %d processes fully attributed, %d records incomplete", len(seen), n, partial)
	}
}

// loopCounts are a Loop's allowed connects that worked and that failed,
// and its denied connects that worked and that were refused (EPERM).
func loopCounts(t *testing.T, res kerneltest.Result) (a, af, dd, df int) {
	t.Helper()
	if res.Err != kerneltest.OK || len(res.Tallies) != 2 {
		t.Fatalf("loop: %s %v", res, res.Tallies)
	}
	for outcome, n := range res.Tallies[0] {
		if outcome == kerneltest.OK {
			a += n
		} else {
			af += n
		}
	}
	for outcome, n := range res.Tallies[1] {
		if outcome == "EPERM" {
			df += n
		} else {
			dd += n
		}
	}
	return a, af, dd, df
}

// A worker forked without an exec (Python's multiprocessing, a pre-forking
// server) is in the process cache in its forked form, and whether it
// exec'd since is told by the process ring's watermark. On a quiet host
// nothing moved the watermark: each of its records waited out the joiner's
// second, holding up the gate's ring reader meanwhile, until some process
// somewhere forked, exec'd or exited. Now the joiner wakes the process
// ring's reader, which says the ring is empty (sensor.Quiet), and the
// worker's records arrive while it runs.
func TestForkedWorkerRecordedWhileItRuns(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	d := startDaemon(t, "--config", configFile(t, "audit:\n  aggregate_window: 0s\n"))
	const n = 30
	script := fmt.Sprintf(`import os, socket, time
pid = os.fork()
if pid == 0:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(%d): s.sendto(b"x", ("127.0.0.1", 9))
    time.sleep(120)
    os._exit(0)
os.waitpid(pid, 0)`, n)
	cmd := exec.Command(filepath.Join(d.bin, "agentfence"), "run", "--socket", d.socket, "--intent", "forked worker",
		"--allow", "udp://127.0.0.1:9", "--", python, "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	// Far less than the second a record each that the worker's records
	// took (all of them came when it exited, 120 s on).
	deadline := time.Now().Add(15 * time.Second)
	for {
		var got int
		for _, r := range d.records(t) {
			if r.Kind == audit.KindSendmsg && r.Session != nil && r.Session.Intent == "forked worker" &&
				r.Process.Comm == "python3" && r.Outcome.Verdict == audit.VerdictAllowed {
				got++
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the forked worker's %d records after 15 s", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
