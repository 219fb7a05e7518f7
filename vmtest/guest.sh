#!/bin/bash
# Stage 2, PID 1 in the guest, on the host's userspace (read-only 9p root).
# Sets up what the kernel tests expect of a host, runs each package's
# prebuilt test binary and writes NAME.log/NAME.rc to the results share
# (/mnt), then powers off. Settings come from /mnt/config (vmtest.sh).
. /mnt/config
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# AGENTFENCE_EMULATED: stress tests run a tenth of their rounds (privtest.Rounds).
export HOME=/root TMPDIR=/tmp CI=true AGENTFENCE_E2E_BIN=$BIN AGENTFENCE_EMULATED=1

off() {
	sync
	echo "VMTEST-DONE"
	echo o >/proc/sysrq-trigger
	sleep 10
}

mnt() { mountpoint -q "$3" || mount -t "$1" "$2" "$3" || echo "vmtest: mount $1 on $3 failed"; }
# The root is read-only: tmpfs wherever tests and tools write. A checkout
# or cache under one of those (a CI clone in /tmp) is bound back from the
# host's root, kept reachable at /dev/.hostroot.
mkdir -p /dev/pts /dev/shm /dev/.hostroot && mnt devpts devpts /dev/pts
mount --bind / /dev/.hostroot
for d in /tmp /run /var/tmp /dev/shm; do
	mnt tmpfs tmpfs $d
	for keep in "$REPO" "$SRC" "$BIN"; do
		case $keep in "$d"/*)
			mountpoint -q "$keep" && continue
			mkdir -p "$keep" && mount --bind "/dev/.hostroot$keep" "$keep" ||
				echo "vmtest: cannot reach $keep under the guest's $d"
			;;
		esac
	done
done
mnt cgroup2 cgroup2 /sys/fs/cgroup
mnt bpf bpf /sys/fs/bpf
mnt debugfs debugfs /sys/kernel/debug
mnt tracefs tracefs /sys/kernel/tracing
mnt securityfs securityfs /sys/kernel/security

# Stage 1 loaded the modules the tests pull in (sock_diag, dummy); the host
# has no modprobe and no /lib/modules for this kernel, so any other module
# the kernel asks for is logged (modprobe.log) and refused.
mkdir -p /run/vmtest
printf '#!/bin/sh\necho "$*" >>/mnt/modprobe.log\nexit 1\n' >/run/vmtest/modprobe
chmod 755 /run/vmtest/modprobe && echo /run/vmtest/modprobe >/proc/sys/kernel/modprobe

# Loopback, plus a dummy link holding default routes: the tests send to
# addresses outside loopback (udp [::2]:7 must succeed), and on a dummy
# link nothing leaves the VM.
ip link set lo up
if ip link add vmtest0 type dummy; then
	ip link set vmtest0 up
	ip addr add 192.0.2.1/24 dev vmtest0
	ip -6 addr add 2001:db8::1/64 dev vmtest0 nodad
	ip route add default dev vmtest0
	ip -6 route add default dev vmtest0
else
	echo "vmtest: no dummy link: tests that need a default route will fail"
fi

{
	echo "kernel: $(uname -r) ($(uname -v))"
	echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
	echo "btf: $([ -r /sys/kernel/btf/vmlinux ] && echo yes || echo no)"
} >/mnt/kernel.info
cat /mnt/kernel.info

for pkg in $PKGS; do
	name=${pkg//\//_}
	echo "vmtest: running $pkg"
	start=$(date +%s)
	if [ -x "$BIN/$name.test" ]; then
		# The tests read testdata relative to their package directory.
		(cd "$SRC/$pkg" && timeout -k 10 "$OUTER_TIMEOUT" "$BIN/$name.test" \
			-test.v -test.count="${COUNT:-1}" -test.timeout="$TIMEOUT" ${RUN:+-test.run="$RUN"} ${SKIP:+-test.skip="$SKIP"}) >"/mnt/$name.log" 2>&1
		rc=$?
	else
		echo "no test binary $BIN/$name.test" >"/mnt/$name.log"
		rc=127
	fi
	echo "$rc $(($(date +%s) - start))" >"/mnt/$name.rc"
	echo "vmtest: $pkg rc=$rc in $(($(date +%s) - start))s"
done
off
