package sink

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// fileTransport appends lines to a file and rotates it by size:
// path -> path.1 -> ... -> path.<maxFiles>, the oldest removed.
type fileTransport struct {
	path     string
	maxSize  int64
	maxFiles int
	f        *os.File
	size     int64
}

func newFileTransport(path string, maxSize int64, maxFiles int) (*fileTransport, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	t := &fileTransport{path: path, maxSize: maxSize, maxFiles: maxFiles}
	return t, t.open()
}

func (t *fileTransport) open() error {
	f, err := os.OpenFile(t.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	t.f, t.size = f, st.Size()
	return nil
}

func (t *fileTransport) rotate() error {
	if err := t.f.Close(); err != nil {
		return err
	}
	t.f = nil
	os.Remove(fmt.Sprintf("%s.%d", t.path, t.maxFiles))
	for i := t.maxFiles - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", t.path, i), fmt.Sprintf("%s.%d", t.path, i+1))
	}
	if t.maxFiles >= 1 {
		if err := os.Rename(t.path, t.path+".1"); err != nil {
			return err
		}
	} else if err := os.Remove(t.path); err != nil {
		return err
	}
	return t.open()
}

func (*fileTransport) headless() {}

func (t *fileTransport) Send(_ context.Context, batch []message) error {
	if t.f == nil {
		if err := t.open(); err != nil {
			return err
		}
	}
	var buf []byte
	for _, m := range batch {
		n := int64(len(m.payload) + 1)
		// Rotate before a line that would overflow, so each file holds
		// whole lines and a file never exceeds maxSize unless one line does.
		if t.size > 0 && t.size+int64(len(buf))+n > t.maxSize {
			if err := t.write(buf); err != nil {
				return err
			}
			buf = buf[:0]
			if err := t.rotate(); err != nil {
				return err
			}
		}
		buf = append(buf, m.payload...)
		buf = append(buf, '\n')
	}
	return t.write(buf)
}

func (t *fileTransport) write(buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	n, err := t.f.Write(buf)
	t.size += int64(n)
	return err
}

func (t *fileTransport) Close() error {
	if t.f == nil {
		return nil
	}
	err := t.f.Sync()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	t.f = nil
	return err
}
