#!/bin/bash
# make vmtest: run the kernel tests on Debian's 5.10, 6.1 and 6.12 in qemu
# (TCG) and natively on the host kernel, then print a kernel x package
# matrix. See docs/kernels.md, "How the matrix is run".
#
#   KERNELS="5.10 6.1 6.12 host"   kernels to run (default: all four)
#   PKGS="enforcer sensor ..."     packages to test (default: the kernel ones)
#   VMTEST_TIMEOUT=40m             go test timeout per package
#   VMTEST_RUN=REGEXP              only the tests matching it (go test -run)
#   VMTEST_SKIP=REGEXP             not the tests matching it (go test -skip)
#   VMTEST_COUNT=1                 run each test this many times (go test
#                                  -count), to chase an intermittent failure
#   VMTEST_LOGLEVEL=4              guest console log level (7: every kernel
#                                  message, stack traces of lockups included)
#   VMTEST_TCG_THREAD=single       qemu TCG threading: single (one host
#                                  thread runs both vCPUs) or multi (faster;
#                                  crashes guests, see docs/kernels.md)
#   VMTEST_CACHE=.cache/vmtest     kernels, initramfs, binaries, logs
#   VMTEST_REV=HEAD                test a commit (git archive) instead of
#                                  the work tree, e.g. while others edit it
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
HERE=$REPO/vmtest
# Absolute: the binaries are built from inside the source tree.
CACHE=$(realpath -m "${VMTEST_CACHE:-$REPO/.cache/vmtest}")
KERNELS=${KERNELS:-5.10 6.1 6.12 host}
# Every package whose tests load programs (internal/privtest users), minus
# audit/sink, which needs rsyslogd rather than a kernel.
PKGS=${PKGS:-}
# "./..." is the Makefile's own PKGS (for make test), not a choice made here.
[ "$PKGS" = "./..." ] && PKGS=
PKGS=${PKGS:-enforcer enforcer/sockdestroy sensor sensor/tlsprobe sensor/proccache internal/ringreader doctor e2e}
PKGS=$(echo $PKGS | sed 's#\./##g')
TIMEOUT=${VMTEST_TIMEOUT:-40m}
COUNT=${VMTEST_COUNT:-1}
# Multi-threaded TCG runs a vCPU per host thread, and the tests patch kernel
# text all the time (attaching a program flips static branches); there,
# 5.10 hung and 6.12 oopsed on an int3 left at a patched site
# (docs/kernels.md, "TCG threading"). One thread for both vCPUs is slower
# and has not failed so.
TCG_THREAD=${VMTEST_TCG_THREAD:-single}
MEM=${VMTEST_MEM:-2G}
BIN=$CACHE/bin
SRC=$REPO

log() { echo "vmtest: $*" >&2; }
die() {
	log "$*"
	exit 1
}
. "$HERE/kernels.sh"

[ "$(id -u)" = 0 ] || die "needs root (the host row loads programs; qemu shares / read-only)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
command -v busybox >/dev/null || die "busybox missing (apt-get install busybox-static)"
mkdir -p "$CACHE" "$BIN"

# build compiles each package's test binary and the daemon/CLI for e2e on
# the host; the guests run them over the read-only share. A package that
# does not build is reported as such in every row.
build() {
	local pkg name
	log "building test binaries from $SRC into $BIN"
	(cd "$SRC" && go build -trimpath -o "$BIN/" ./cmd/agentfenced ./cmd/agentfence) >"$BIN/cmd.buildlog" 2>&1 ||
		log "building agentfenced/agentfence failed: $(head -n3 "$BIN/cmd.buildlog")"
	for pkg in $PKGS; do
		name=${pkg//\//_}
		rm -f "$BIN/$name.test"
		(cd "$SRC" && go test -c -o "$BIN/$name.test" "./$pkg") >"$BIN/$name.buildlog" 2>&1 ||
			log "building $pkg failed: $(head -n3 "$BIN/$name.buildlog")"
	done
}

# initramfs K VER: a busybox initramfs with the modules the guest needs
# (9p for its root; sock_diag, dummy and bpf_preload for the tests), each preceded by
# its dependencies (from busybox depmod's modules.dep). Built-in ones are
# not in modules.dep and are skipped.
initramfs() {
	local k=$1 ver=$2 kd=$CACHE/k/$1 out=$CACHE/initrd/$1.cpio.gz root m
	[ -f "$out" ] && [ "$out" -nt "$HERE/init.sh" ] && [ "$out" -nt "$HERE/vmtest.sh" ] && [ "$out" -nt "$kd/.ready" ] && return 0
	root=$(mktemp -d)
	mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/modules"
	cp "$(command -v busybox)" "$root/bin/busybox"
	cp "$HERE/init.sh" "$root/init" && chmod 755 "$root/init"
	mknod "$root/dev/console" c 5 1
	for m in $(awk -v want="virtio_pci 9pnet_virtio 9p dummy inet_diag tcp_diag udp_diag raw_diag unix_diag bpf_preload" -f /dev/stdin "$kd/lib/modules/$ver/modules.dep" <<'EOF'
# Print the module files to insmod for the wanted names, dependencies first.
{ f = $1; sub(/:$/, "", f); n = f; sub(/.*\//, "", n); sub(/\.ko$/, "", n); gsub(/-/, "_", n)
  path[n] = f; deps[n] = ""; for (i = NF; i >= 2; i--) deps[n] = deps[n] " " $i }
function load(n,   d, i, k, x) {
  if (n in done || !(n in path)) return
  done[n] = 1; k = split(deps[n], d, " ")
  for (i = 1; i <= k; i++) { x = d[i]; sub(/.*\//, "", x); sub(/\.ko$/, "", x); gsub(/-/, "_", x); load(x) }
  print path[n] }
END { k = split(want, w, " "); for (i = 1; i <= k; i++) load(w[i]) }
EOF
	); do
		cp "$kd/lib/modules/$ver/$m" "$root/modules/"
		basename "$m" >>"$root/modules.order"
	done
	touch "$root/modules.order"
	mkdir -p "$CACHE/initrd"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
	rm -rf "$root"
}

# run_vm K: boot kernel K with the host's root shared read-only and the
# run directory as a writable results share.
run_vm() {
	local k=$1 run=$CACHE/run/$1 ver kd=$CACHE/k/$1
	# A kernel that cannot be fetched or unpacked: its last message is why.
	(fetch_kernel "$k") 2>"$run/fetch.log"
	local rc=$?
	cat "$run/fetch.log" >&2
	[ $rc = 0 ] || { tail -n1 "$run/fetch.log" >>"$run/error"; return 1; }
	ver=$(cat "$kd/.ready")
	initramfs "$k" "$ver" 2>>"$run/error" || { echo "initramfs for $ver failed" >>"$run/error"; return 1; }
	cat >"$run/config" <<EOF
REPO='$REPO'
SRC='$SRC'
KDIR='$kd'
BIN='$BIN'
PKGS='$PKGS'
TIMEOUT='$TIMEOUT'
RUN='${VMTEST_RUN:-}'
SKIP='${VMTEST_SKIP:-}'
COUNT='$COUNT'
OUTER_TIMEOUT='$(outer "$TIMEOUT" 2)'
EOF
	log "kernel $k ($ver): booting under TCG (thread=$TCG_THREAD)"
	# KVM hangs on these machines: TCG only. No NIC: the tests stay on
	# loopback and a dummy link inside the guest.
	timeout -k 10 "$(outer "$TIMEOUT" "$(echo $PKGS | wc -w)")" \
		qemu-system-x86_64 -accel "tcg,thread=$TCG_THREAD" -cpu max -smp 2 -m "$MEM" -nographic -no-reboot -nic none \
		-kernel "$kd/boot/vmlinuz-$ver" -initrd "$CACHE/initrd/$k.cpio.gz" \
		-append "console=ttyS0 panic=-1 lsm=lockdown,capability,yama,bpf quiet loglevel=${VMTEST_LOGLEVEL:-4}" \
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
		-virtfs "local,path=$run,mount_tag=results,security_model=none" \
		</dev/null >"$run/console.log" 2>&1
	printf '\nqemu exit %s\n' $? >>"$run/console.log"
	grep -q VMTEST-DONE "$run/console.log" && return 0
	{
		echo "kernel $k ($ver) did not finish its run:"
		# The console minus terminal escapes and firmware banners.
		sed 's/\r//g; s/\x1bc/\n/g; s/\x1b\[[0-9;?]*[a-zA-Z]//g' "$run/console.log" |
			grep -v -e '^SeaBIOS' -e '^Booting from' -e '^ *$' >"$run/console.txt"
		grep -m3 -e VMTEST-FATAL -e 'Kernel panic' -e 'qemu-system' "$run/console.txt" || tail -n 5 "$run/console.txt"
	} >>"$run/error"
	return 1
}

# run_host: the same binaries natively, on the host's kernel.
run_host() {
	local run=$CACHE/run/host pkg name start rc
	{
		echo "kernel: $(uname -r) ($(uname -v))"
		echo "lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
	} >"$run/kernel.info"
	for pkg in $PKGS; do
		name=${pkg//\//_}
		log "host: running $pkg"
		start=$(date +%s)
		if [ -x "$BIN/$name.test" ]; then
			(cd "$SRC/$pkg" && CI=true AGENTFENCE_E2E_BIN=$BIN timeout -k 10 "$(outer "$TIMEOUT" 2)" \
				"$BIN/$name.test" -test.v -test.count="$COUNT" -test.timeout="$TIMEOUT" ${VMTEST_RUN:+-test.run="$VMTEST_RUN"} \
				${VMTEST_SKIP:+-test.skip="$VMTEST_SKIP"}) >"$run/$name.log" 2>&1
			rc=$?
		else
			echo "no test binary (build failed: $(head -n1 "$BIN/$name.buildlog"))" >"$run/$name.log"
			rc=127
		fi
		echo "$rc $(($(date +%s) - start))" >"$run/$name.rc"
	done
}

# outer T N: N times the go test timeout T (e.g. 40m), plus 5 minutes.
outer() {
	local t=$1 m
	case $t in *m) m=${t%m} ;; *h) m=$((${t%h} * 60)) ;; *s) m=$(((${t%s} + 59) / 60)) ;; *) m=60 ;; esac
	echo "$((m * $2 + 5))m"
}

if [ -n "${VMTEST_REV:-}" ]; then
	rev=$(git -C "$REPO" rev-parse --short "$VMTEST_REV") || die "no commit $VMTEST_REV"
	SRC=$CACHE/src/$rev
	rm -rf "$SRC" && mkdir -p "$SRC"
	git -C "$REPO" archive "$rev" | tar -x -C "$SRC" || die "git archive $rev failed"
fi
status=0
# "vmtest.sh matrix" only prints the matrix of the last run again.
if [ "${1:-}" != matrix ]; then
	build
	for k in $KERNELS; do
		run=$CACHE/run/$k
		rm -rf "$run" && mkdir -p "$run"
		start=$(date +%s)
		if [ "$k" = host ]; then
			run_host
		elif ! run_vm "$k"; then
			status=1
			log "kernel $k: $(tr '\n' ' ' <"$run/error")"
		fi
		echo $(($(date +%s) - start)) >"$run/wall"
		log "kernel $k: $(cat "$run/wall")s"
	done
fi

# The matrix: one row per kernel, one column per package.
matrix=$CACHE/matrix.md
details=$(mktemp)
{
	echo "# vmtest matrix, $(date -u '+%Y-%m-%d %H:%M UTC'), ${rev:-work tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)}"
	echo
	printf '| kernel | wall |'
	for pkg in $PKGS; do printf ' %s |' "$pkg"; done
	printf '\n|---|---|'
	for pkg in $PKGS; do printf -- '---|'; done
	echo
	for k in $KERNELS; do
		run=$CACHE/run/$k
		kv=$(sed -n 's/^kernel: \([^ ]*\).*/\1/p' "$run/kernel.info" 2>/dev/null)
		printf '| %s %s | %ss |' "$k" "${kv:+($kv)}" "$(cat "$run/wall" 2>/dev/null)"
		if [ -s "$run/error" ]; then
			echo "- **$k did not run**: $(tr '\n' ' ' <"$run/error")" >>"$details"
		fi
		for pkg in $PKGS; do
			name=${pkg//\//_}
			if [ ! -f "$run/$name.rc" ]; then
				printf ' **not run** |'
				status=1
				continue
			fi
			read -r rc secs <"$run/$name.rc"
			[ "$rc" = 0 ] || status=1
			out=$(awk -v rc="$rc" -v secs="$secs" -v what="$k $pkg" -f "$HERE/matrix.awk" "$run/$name.log")
			printf ' %s |' "$(echo "$out" | sed -n 's/^CELL\t//p')"
			echo "$out" | sed -n 's/^DETAIL\t//p' >>"$details"
		done
		echo
	done
	echo
	echo "Logs: $CACHE/run/<kernel>/<package>.log, console.log. Failures and skips:"
	echo
	cat "$details"
} >"$matrix"
rm -f "$details"
cat "$matrix"
exit $status
