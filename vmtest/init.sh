#!/bin/busybox sh
# Stage 1, /init of the initramfs (busybox only). Loads the 9p/overlay
# modules copied from the kernel package, mounts the host's root read-only
# over virtio 9p with a tmpfs overlay on top, and switches into it, so the
# guest runs the host's own userspace (ip, cc, python3...) on its kernel.
/bin/busybox --install -s /bin
export PATH=/bin

fatal() {
	echo "VMTEST-FATAL: $*"
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
	insmod "/modules/$m" || fatal "insmod $m failed"
done

mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower ||
	fatal "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
if ! mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot; then
	# Without overlayfs the root stays read-only; stage 2 puts tmpfs
	# where tests write (/tmp, /run, /root).
	echo "vmtest: overlay failed, root is read-only"
	mount --move /lower /newroot
fi
# The writable results share goes on /mnt: it exists on Debian, so this
# works on a read-only root too.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot/mnt ||
	fatal "cannot mount the results share"
. /newroot/mnt/config || fatal "no config in the results share"
for d in dev proc sys; do mount --move /$d /newroot/$d; done
echo "vmtest: stage 1 done, switching to $REPO/vmtest/guest.sh"
exec switch_root /newroot /bin/bash "$REPO/vmtest/guest.sh"
