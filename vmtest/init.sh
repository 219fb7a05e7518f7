#!/bin/busybox sh
# Stage 1, /init of the initramfs (busybox only). Loads the 9p modules
# copied from the kernel package, mounts the host's root read-only over
# virtio 9p and switches into it, so the guest runs the host's own
# userspace (ip, cc, ...) on its kernel. No overlayfs on top: an exe on
# overlay has one st_dev for stat() and another in the kernel's inode, and
# tests compare the two. Stage 2 puts tmpfs where tests write.
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

mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot ||
	fatal "cannot mount the host root over 9p"
# The writable results share goes on /mnt: it exists on Debian, so it needs
# no directory created on the read-only root.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot/mnt ||
	fatal "cannot mount the results share"
. /newroot/mnt/config || fatal "no config in the results share"
for d in dev proc sys; do mount --move /$d /newroot/$d; done
echo "vmtest: stage 1 done, switching to $REPO/vmtest/guest.sh"
exec switch_root /newroot /bin/bash "$REPO/vmtest/guest.sh"
