package procfs

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// A hybrid (cgroup v1 controllers + v2 at /sys/fs/cgroup/unified) layout,
// as on the development VMs.
const hybridMountInfo = `21 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
22 21 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4096k
23 21 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

// A unified (cgroup v2 only) layout as systemd sets it up.
const unifiedMountInfo = `26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
27 26 0:25 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 27 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
29 27 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
30 27 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:10 - tracefs tracefs rw
`

func TestParseMountInfoHybrid(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(hybridMountInfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 8 {
		t.Fatalf("got %d mounts, want 8", len(ms))
	}
	want := Mount{ID: 41, Parent: 31, MajorMinor: "0:38", Root: "/", MountPoint: "/sys/fs/cgroup/unified",
		Options: "rw,relatime", FSType: "cgroup2", Source: "cgroup2", SuperOptions: "rw"}
	if !reflect.DeepEqual(ms[7], want) {
		t.Errorf("last mount = %+v, want %+v", ms[7], want)
	}
	if !reflect.DeepEqual(ms[0].Optional, []string{"shared:1"}) {
		t.Errorf("optional fields = %q", ms[0].Optional)
	}
	m, ok := FindCgroup2(ms)
	if !ok || m.MountPoint != "/sys/fs/cgroup/unified" {
		t.Errorf("FindCgroup2 = %+v, %v; want /sys/fs/cgroup/unified", m, ok)
	}
	if got := FindFS(ms, "bpf"); len(got) != 0 {
		t.Errorf("FindFS(bpf) = %v, want none", got)
	}
	if got := FindFS(ms, "cgroup"); len(got) != 3 {
		t.Errorf("FindFS(cgroup) found %d v1 hierarchies, want 3", len(got))
	}
}

func TestParseMountInfoUnified(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(unifiedMountInfo))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := FindCgroup2(ms)
	if !ok || m.MountPoint != "/sys/fs/cgroup" || m.SuperOptions != "rw,nsdelegate,memory_recursiveprot" {
		t.Errorf("FindCgroup2 = %+v, %v", m, ok)
	}
	if !reflect.DeepEqual(m.Optional, []string{"shared:8"}) {
		t.Errorf("optional = %q", m.Optional)
	}
	bpf := FindFS(ms, "bpf")
	if len(bpf) != 1 || bpf[0].MountPoint != "/sys/fs/bpf" {
		t.Errorf("FindFS(bpf) = %+v", bpf)
	}
}

func TestFindCgroup2Preference(t *testing.T) {
	// A container: its own cgroup namespace view at /sys/fs/cgroup, the
	// host's hierarchy bind-mounted on top of it, and another elsewhere.
	const in = `100 99 0:40 / /run/other-cgroup rw - cgroup2 cgroup2 rw
101 99 0:41 /kubepods/pod1/ctr /sys/fs/cgroup ro - cgroup2 cgroup2 rw
102 99 0:41 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
`
	ms, err := ParseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	m, ok := FindCgroup2(ms)
	if !ok || m.ID != 102 || m.Root != "/" {
		t.Errorf("FindCgroup2 = %+v, want the top mount 102 at /sys/fs/cgroup", m)
	}
	if v := Visible(ms); len(v) != 2 || v[0].ID != 100 || v[1].ID != 102 {
		t.Errorf("Visible = %+v, want mounts 100 and 102", v)
	}
	// No cgroup2 at all (pure v1).
	v1, _ := ParseMountInfo(strings.NewReader("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
	if _, ok := FindCgroup2(v1); ok {
		t.Error("FindCgroup2 found a mount in a v1-only layout")
	}
}

func TestParseMountInfoEscapesAndNoOptional(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(
		`50 21 0:50 /a\040dir /mnt/with\040space\011tab rw - tmpfs my\134src rw` + "\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if m.Root != "/a dir" || m.MountPoint != "/mnt/with space\ttab" || m.Source != `my\src` {
		t.Errorf("escapes not decoded: %+v", m)
	}
	if m.Optional != nil {
		t.Errorf("optional = %q, want none", m.Optional)
	}
}

func TestParseMountInfoMalformed(t *testing.T) {
	for _, in := range []string{
		"garbage\n",
		"1 2 0:1 / /x rw shared:1 tmpfs tmpfs rw\n", // no separator
		"x 2 0:1 / /x rw - tmpfs tmpfs rw\n",        // bad id
		"1 y 0:1 / /x rw - tmpfs tmpfs rw\n",        // bad parent
		"1 2 0:1 / /x rw - tmpfs\n",                 // separator without type and source
	} {
		if _, err := ParseMountInfo(strings.NewReader(in)); err == nil {
			t.Errorf("ParseMountInfo(%q) accepted", in)
		} else if !strings.Contains(err.Error(), "line 1") {
			t.Errorf("error %q does not name the line", err)
		}
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add(hybridMountInfo)
	f.Add(unifiedMountInfo)
	f.Add(`30 1 0:26 / /mnt/my\040cg rw - cgroup2 none rw` + "\n")
	f.Add("1 2 0:1 / / rw - ext4\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.FSType == "" || m.MountPoint == "" {
				t.Fatalf("mount without a file system type from %q: %+v", s, m)
			}
		}
		if m, ok := FindCgroup2(ms); ok && (m.FSType != "cgroup2" || !slices.ContainsFunc(ms, func(x Mount) bool { return reflect.DeepEqual(x, m) })) {
			t.Fatalf("FindCgroup2 returned %+v, not a cgroup2 mount of %q", m, s)
		}
	})
}
