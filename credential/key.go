// Package credential recognises credentials where agentfence sees them (a
// process's command line) and names each by a fingerprint, never by its
// value: HMAC-SHA256 under a key of this node, truncated. Two records of
// the same credential on one node carry the same fingerprint, so they can
// be matched; off the node the fingerprint says nothing about the value,
// and a guess cannot be checked against it without the key.
package credential

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFile is the node key's name in the state directory.
const KeyFile = "credential.key"

// keySize is the HMAC key's size: SHA-256's block is larger, but 32 random
// bytes are all the strength HMAC-SHA256 can use.
const keySize = 32

// fingerprintBytes is how much of the HMAC a fingerprint keeps: 64 bits,
// enough to tell a node's credentials apart, short enough to read.
const fingerprintBytes = 8

// Key is a node's fingerprint key.
type Key struct{ k []byte }

// NewKey is a key with the given bytes (a test's, or one read elsewhere).
func NewKey(b []byte) (*Key, error) {
	if len(b) != keySize {
		return nil, fmt.Errorf("credential: key is %d bytes, want %d", len(b), keySize)
	}
	return &Key{k: append([]byte(nil), b...)}, nil
}

// LoadOrCreateKey reads the node key from dir, creating it (0600, random)
// when there is none. A key file that others may read, or of the wrong
// size, is refused rather than used or replaced: the fingerprints already
// written were made with it.
func LoadOrCreateKey(dir string) (*Key, error) {
	path := filepath.Join(dir, KeyFile)
	b, err := readKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		b = make([]byte, keySize)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("credential: new key: %w", err)
		}
		if err := writeKey(path, b); err != nil {
			return nil, err
		}
		// Another daemon may have won the race to create it: use the
		// file's key, whichever it is.
		b, err = readKey(path)
	}
	if err != nil {
		return nil, err
	}
	return NewKey(b)
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("credential: %s is %s, want a regular file of mode 0600", path, fi.Mode())
	}
	b := make([]byte, keySize+1)
	n, _ := f.Read(b)
	if n != keySize {
		return nil, fmt.Errorf("credential: %s is not a %d-byte key", path, keySize)
	}
	return b[:n], nil
}

// writeKey creates path with b unless it exists. The key is written to a
// temporary file and linked into place, so a crash never leaves a short
// key where the next start would find it.
func writeKey(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("credential: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), KeyFile+".new-*") // 0600
	if err != nil {
		return fmt.Errorf("credential: create key: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("credential: write key: %w", err)
	}
	if err := os.Link(f.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("credential: install key: %w", err)
	}
	return nil
}

// Fingerprint names secret: the first 64 bits of its HMAC-SHA256 under the
// node key, in hex.
func (k *Key) Fingerprint(secret string) string {
	m := hmac.New(sha256.New, k.k)
	m.Write([]byte(secret))
	return hex.EncodeToString(m.Sum(nil)[:fingerprintBytes])
}
