# Fetch and unpack Debian's kernels into the private cache. Sourced by
# vmtest.sh (needs $CACHE and die/log from there).
#
# The host's apt is never touched: a private apt configuration under
# $CACHE/apt lists the other suites, with the mirror URIs read from the
# host's own sources at run time (no mirror name lives in the repo).

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# suite_of KERNEL: the Debian suite whose kernel this is.
suite_of() {
	case $1 in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12) echo trixie ;;
	*) return 1 ;;
	esac
}

# host_uris prints "main URI" and "security URI" lines from the host's
# deb822 .sources files or one-line sources.list.
host_uris() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		# One stanza per blank-line-separated paragraph.
		awk 'BEGIN { RS = ""; FS = "\n" }
		{ u = ""; s = ""
		  for (i = 1; i <= NF; i++) {
		    if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u) }
		    if ($i ~ /^Suites:/) { s = $i }
		  }
		  if (u == "") next
		  split(u, us, /[ \t]+/)
		  print (s ~ /-security/ ? "security " : "main ") us[1] }' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		awk '$1 == "deb" { u = $2; s = $3
		  if (u ~ /^\[/) { for (i = 2; i <= NF && $i !~ /\]$/; i++); u = $(i+1); s = $(i+2) }
		  print (s ~ /-security/ ? "security " : "main ") u }' "$f"
	done
}

APT_DIR=
apt_private() {
	apt-get -q -o Dir::Etc::SourceList="$APT_DIR/sources.list" \
		-o Dir::Etc::SourceParts="$APT_DIR/empty" \
		-o Dir::Etc::PreferencesParts="$APT_DIR/empty" \
		-o Dir::Etc::Preferences="$APT_DIR/empty/none" \
		-o Dir::State="$APT_DIR/state" -o Dir::State::status="$APT_DIR/status" \
		-o Dir::Cache="$APT_DIR/cache" -o Debug::NoLocking=1 \
		-o APT::Sandbox::User=root -o Acquire::GzipIndexes=false \
		-o Acquire::Languages=none -o APT::Architecture=amd64 \
		-o APT::Architectures::=amd64 "$@"
}

# apt_setup writes the private configuration and runs one apt-get update
# for all suites (once per vmtest run, only when a .deb is missing).
APT_READY=
apt_setup() {
	[ -n "$APT_READY" ] && return 0
	APT_DIR=$CACHE/apt
	mkdir -p "$APT_DIR/empty" "$APT_DIR/state/lists/partial" "$APT_DIR/cache/archives/partial"
	: >"$APT_DIR/status"
	local main sec s
	main=$(host_uris | awk '$1 == "main" { print $2; exit }')
	sec=$(host_uris | awk '$1 == "security" { print $2; exit }')
	[ -n "$main" ] || die "no Debian mirror URI found in /etc/apt/sources.list{,.d} to reuse"
	[ -r "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"
	for s in bullseye trixie; do
		gpg --show-keys "$KEYRING" 2>/dev/null | grep -q "/$s)" ||
			log "warning: $KEYRING has no $s key; apt will refuse that suite"
	done
	{
		for s in bullseye bookworm trixie; do
			echo "deb [signed-by=$KEYRING] $main $s main"
			echo "deb [signed-by=$KEYRING] $main $s-updates main"
			[ -n "$sec" ] && echo "deb [signed-by=$KEYRING] $sec $s-security main"
		done
	} >"$APT_DIR/sources.list"
	log "apt: private update of bullseye/bookworm/trixie from $main${sec:+ and $sec}"
	apt_private update >"$CACHE/apt-update.log" 2>&1 ||
		log "warning: apt-get update reported errors (see $CACHE/apt-update.log)"
	APT_READY=1
}

# newest_image SUITE K: the newest plain-flavour K.x image package of a
# suite, from that suite's own indexes (bullseye also carries 6.1, and
# bookworm 6.12, so the version prefix matters too).
newest_image() {
	local s=$1 k=$2
	cat "$APT_DIR"/state/lists/*_dists_"$s"_main_binary-amd64_Packages \
		"$APT_DIR"/state/lists/*_dists_"$s"-updates_main_binary-amd64_Packages \
		"$APT_DIR"/state/lists/*_dists_"$s"-security_main_binary-amd64_Packages 2>/dev/null |
		sed -n 's/^Package: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' |
		grep "^linux-image-${k//./\\.}[.-]" |
		grep -v -e -cloud- -e -rt- -e -dbg | sort -uV | tail -n1
}

# fetch_kernel K: make $CACHE/k/K hold the unpacked image with decompressed
# modules and a busybox depmod. Offline once the .deb is cached.
fetch_kernel() {
	local k=$1 s deb dir pkg ver
	s=$(suite_of "$k") || die "unknown kernel $k (known: 5.10 6.1 6.12 host)"
	dir=$CACHE/k/$k
	[ -f "$dir/.ready" ] && return 0
	deb=$(ls "$CACHE/deb/$k"/linux-image-*.deb 2>/dev/null | tail -n1)
	if [ -z "$deb" ]; then
		apt_setup
		pkg=$(newest_image "$s" "$k")
		[ -n "$pkg" ] || die "kernel $k: no linux-image-*-amd64 in $s (apt update failed? see $CACHE/apt-update.log)"
		log "kernel $k: downloading $pkg from $s"
		mkdir -p "$CACHE/deb/$k"
		(cd "$CACHE/deb/$k" && apt_private download "$pkg") >"$CACHE/deb/$k/download.log" 2>&1 ||
			die "kernel $k: apt-get download $pkg failed: $(tail -n3 "$CACHE/deb/$k/download.log")"
		deb=$(ls "$CACHE/deb/$k"/linux-image-*.deb 2>/dev/null | tail -n1)
		[ -n "$deb" ] || die "kernel $k: no .deb after download"
	fi
	log "kernel $k: unpacking $(basename "$deb")"
	rm -rf "$dir" && mkdir -p "$dir"
	dpkg-deb -x "$deb" "$dir" || die "kernel $k: dpkg-deb -x failed"
	# trixie puts modules under usr/lib; busybox depmod/modprobe want lib/.
	[ -d "$dir/lib/modules" ] || ln -s usr/lib "$dir/lib"
	ver=$(ls "$dir/lib/modules" | head -n1)
	[ -f "$dir/boot/vmlinuz-$ver" ] || die "kernel $k: no vmlinuz-$ver in $(basename "$deb")"
	# busybox insmod/modprobe cannot read zstd; decompress everything once.
	find "$dir/lib/modules/$ver" -name '*.ko.xz' -exec xz -d {} + &&
		find "$dir/lib/modules/$ver" -name '*.ko.zst' -exec zstd -q -d --rm {} + ||
		die "kernel $k: decompressing modules failed"
	busybox depmod -b "$dir" "$ver" || die "kernel $k: depmod failed"
	echo "$ver" >"$dir/.ready"
}
