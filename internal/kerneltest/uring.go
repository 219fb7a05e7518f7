package kerneltest

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

func (o Uring) run(c *child) { c.report(o.probe()) }

// probe connects a TCP socket through io_uring (IORING_OP_CONNECT, 5.5+)
// rather than connect(2): the route a member would take to get past
// anything that watches the connect syscall. The result is the outcome of
// the connect's completion, or "setup:ERRNO" where io_uring is not to be
// had.
func (o Uring) probe() Result {
	ap := o.Addr
	if !ap.Addr().Is4() {
		return Result{Err: unix.ErrnoName(unix.EAFNOSUPPORT)}
	}
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("socket", err)
	}
	defer unix.Close(sock)

	// struct io_uring_params: 120 bytes; the ring offsets the kernel fills
	// in start at byte 40 (sq_off) and 80 (cq_off).
	var params [120]byte
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params[0])), 0)
	if errno != 0 {
		return failed("setup", errno)
	}
	defer unix.Close(int(fd))
	u32 := func(b []byte, off int) uint32 { return *(*uint32)(unsafe.Pointer(&b[off])) }
	sqEntries, cqEntries := u32(params[:], 0), u32(params[:], 4)
	sqOff, cqOff := params[40:80], params[80:120]
	sqSize := int(u32(sqOff, 24)) + int(sqEntries)*4  // array offset + array
	cqSize := int(u32(cqOff, 20)) + int(cqEntries)*16 // cqes offset + cqes

	const offSQRing, offCQRing, offSQEs = 0, 0x8000000, 0x10000000
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	sq, err := unix.Mmap(int(fd), offSQRing, sqSize, prot, flags)
	if err != nil {
		return failed("mmap", err)
	}
	defer unix.Munmap(sq)
	cq, err := unix.Mmap(int(fd), offCQRing, cqSize, prot, flags)
	if err != nil {
		return failed("mmap", err)
	}
	defer unix.Munmap(cq)
	sqes, err := unix.Mmap(int(fd), offSQEs, int(sqEntries)*64, prot, flags)
	if err != nil {
		return failed("mmap", err)
	}
	defer unix.Munmap(sqes)

	// The address lives in memory the Go runtime never moves, since the
	// kernel reads it through a pointer stored in the ring.
	page, err := unix.Mmap(-1, 0, 4096, prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return failed("mmap", err)
	}
	defer unix.Munmap(page)
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&page[0]))
	*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	sa.Port = ap.Port()<<8 | ap.Port()>>8
	sqe := sqes[:64]
	clear(sqe)
	sqe[0] = 16 // IORING_OP_CONNECT
	*(*int32)(unsafe.Pointer(&sqe[4])) = int32(sock)
	*(*uint64)(unsafe.Pointer(&sqe[8])) = uint64(unsafe.Sizeof(*sa)) // off: the address length
	*(*uint64)(unsafe.Pointer(&sqe[16])) = uint64(uintptr(unsafe.Pointer(sa)))

	tail := (*uint32)(unsafe.Pointer(&sq[u32(sqOff, 4)]))
	mask := *(*uint32)(unsafe.Pointer(&sq[u32(sqOff, 8)]))
	array := unsafe.Pointer(&sq[u32(sqOff, 24)])
	*(*uint32)(unsafe.Add(array, 4*(*tail&mask))) = 0
	*tail++
	const enterGetEvents = 1
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, fd, 1, 1, enterGetEvents, 0, 0); errno != 0 {
		return failed("enter", errno)
	}
	head := *(*uint32)(unsafe.Pointer(&cq[u32(cqOff, 0)]))
	cmask := *(*uint32)(unsafe.Pointer(&cq[u32(cqOff, 8)]))
	cqe := cq[int(u32(cqOff, 20))+16*int(head&cmask):]
	res := *(*int32)(unsafe.Pointer(&cqe[8]))
	if res < 0 {
		return result(unix.Errno(-res))
	}
	return Result{Err: OK}
}
