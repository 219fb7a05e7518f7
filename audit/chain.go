package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Canonical returns the canonical bytes of r: its native JSON encoding as
// emitted on a line, without the trailing newline. The encoding is
// encoding/json's with HTML escaping off, members in Record's declaration
// order (written by hand, encode.go). PrevHash of the next record is the
// hex SHA-256 of exactly these bytes, so a receiver verifies the chain over
// the lines it received without re-encoding anything.
func Canonical(r *Record) ([]byte, error) { return AppendCanonical(nil, r) }

// HashLine returns the hex SHA-256 of one canonical line.
func HashLine(line []byte) string {
	sum := sha256.Sum256(line)
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return string(h[:]) // one allocation; EncodeToString made two
}

// ChainState is what survives a restart: the last stamped sequence number
// and the hash of that record's canonical bytes.
type ChainState struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Chain stamps records with a per-host monotonically increasing Seq and the
// hash of the previous record. It is safe for concurrent use.
type Chain struct {
	mu sync.Mutex
	// spooled is the newest seq known to be in the spools; checkpointed
	// with the state, so a restart can tell which stamped records never
	// reached a spool (lost with the process) and report them.
	spooled   uint64
	lostFirst uint64
	lostLast  uint64
	state     ChainState
	statePath string
	saved     ChainState

	savedSpooled uint64
}

// OpenChain loads the chain state from statePath (empty path: in memory
// only). A missing file starts a new chain at seq 1.
func OpenChain(statePath string) (*Chain, error) {
	c := &Chain{statePath: statePath}
	if statePath == "" {
		return c, nil
	}
	b, err := os.ReadFile(statePath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("audit chain state: %w", err)
	}
	var file struct {
		ChainState
		Spooled *uint64 `json:"spooled"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		return nil, fmt.Errorf("audit chain state %s: %w", statePath, err)
	}
	c.state = file.ChainState
	if file.Spooled != nil && *file.Spooled < c.state.Seq {
		c.lostFirst, c.lostLast = *file.Spooled+1, c.state.Seq
	}
	if file.Spooled != nil {
		c.spooled = *file.Spooled
	}
	if c.state.Seq > 0 && len(c.state.Hash) != sha256.Size*2 {
		return nil, fmt.Errorf("audit chain state %s: bad hash", statePath)
	}
	c.saved, c.savedSpooled = c.state, c.spooled
	return c, nil
}

// State returns the last stamped position.
func (c *Chain) State() ChainState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Advance moves the chain forward to st if st is ahead of it. The pipeline
// uses it after a crash: records that reached a spool are further along
// than the last checkpoint, and their seqs must never be reused.
func (c *Chain) Advance(st ChainState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.Seq > c.state.Seq {
		c.state = st
	}
}

// Stamp sets r.Seq, r.PrevHash (and r.Schema when empty) and returns dst
// with the canonical bytes of the stamped record appended.
func (c *Chain) Stamp(dst []byte, r *Record) ([]byte, error) {
	if r.Schema == "" {
		r.Schema = SchemaVersion
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r.Seq = c.state.Seq + 1
	r.PrevHash = c.state.Hash
	start := len(dst)
	dst, err := AppendCanonical(dst, r)
	if err != nil {
		r.Seq, r.PrevHash = 0, ""
		return dst[:start], err
	}
	c.state = ChainState{Seq: r.Seq, Hash: HashLine(dst[start:])}
	return dst, nil
}

// Checkpoint writes the state file atomically (temp file, fsync, rename)
// if it changed since the last checkpoint.
func (c *Chain) Checkpoint() error {
	c.mu.Lock()
	st, spooled := c.state, c.spooled
	c.mu.Unlock()
	if c.statePath == "" || (st == c.saved && spooled == c.savedSpooled) {
		return nil
	}
	b, _ := json.Marshal(struct {
		ChainState
		Spooled uint64 `json:"spooled"`
	}{st, spooled})
	if err := WriteFileAtomic(c.statePath, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("audit chain checkpoint: %w", err)
	}
	c.saved, c.savedSpooled = st, spooled
	return nil
}

// MarkSpooled records that every record up to seq is in the spools.
func (c *Chain) MarkSpooled(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spooled = max(c.spooled, seq)
}

// Lost returns the seqs that were stamped before the last checkpoint but
// never reached a spool (the process died with them in memory), once;
// newest is the newest seq found in the spools since.
func (c *Chain) Lost(newest uint64) (first, last uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	first, last = max(c.lostFirst, newest+1), c.lostLast
	c.lostFirst, c.lostLast = 0, 0
	return first, last, first != 0 && first <= last
}

// WriteFileAtomic replaces path with data so that a crash leaves either the
// old or the new content, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; best effort on odd filesystems
		d.Close()
	}
	return nil
}
