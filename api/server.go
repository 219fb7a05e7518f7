// Package api is the daemon's local HTTP+JSON API on a unix socket, and the
// client the CLI uses. Callers are identified by the kernel's peer
// credentials (SO_PEERCRED), never by anything they send.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/agentfence/agentfence/attribution"
	"github.com/agentfence/agentfence/internal/cgroupv2"
)

// Peer is the process on the other end of an API connection.
type Peer struct {
	PID      int32
	UID, GID uint32
}

func (p Peer) String() string { return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID) }

// Policy decides which peers may use the API.
type Policy struct {
	// UIDs and GIDs allowed to call the API; a peer matching either is allowed.
	UIDs []uint32
	GIDs []uint32
	// SessionCgroupBase is where session cgroups live. A peer inside a
	// session may not open or close sessions: it could otherwise give
	// itself a wider scope.
	SessionCgroupBase string
	// CgroupRoot is the cgroup v2 mount point.
	CgroupRoot string
}

func (p Policy) authorize(peer Peer) error {
	allowed := false
	for _, u := range p.UIDs {
		allowed = allowed || u == peer.UID
	}
	for _, g := range p.GIDs {
		allowed = allowed || g == peer.GID
	}
	if !allowed {
		return fmt.Errorf("caller %s is not allowed to use the agentfence API", peer)
	}
	if p.SessionCgroupBase != "" {
		cg, err := cgroupv2.Of(int(peer.PID))
		if err != nil {
			return fmt.Errorf("caller %s: cannot read its cgroup: %v", peer, err)
		}
		full := filepath.Join(p.CgroupRoot, cg)
		if strings.HasPrefix(full+"/", p.SessionCgroupBase+"/") {
			return fmt.Errorf("caller %s runs inside a session; session members cannot open or close sessions", peer)
		}
	}
	return nil
}

type peerKey struct{}

// Server serves the API.
type Server struct {
	reg    *attribution.Registry
	policy Policy
	log    *slog.Logger
	srv    *http.Server
}

// NewServer makes a server for reg.
func NewServer(reg *attribution.Registry, policy Policy, log *slog.Logger) *Server {
	s := &Server{reg: reg, policy: policy, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", s.open)
	mux.HandleFunc("GET /v1/sessions", s.list)
	mux.HandleFunc("GET /v1/sessions/{id}", s.get)
	mux.HandleFunc("DELETE /v1/sessions/{id}", s.close)
	s.srv = &http.Server{
		Handler: s.authz(mux),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if p, err := peerOf(c); err == nil {
				return context.WithValue(ctx, peerKey{}, p)
			}
			return ctx
		},
	}
	return s
}

// Listen creates the unix socket at path with mode 0600, replacing a stale
// socket left by an earlier daemon.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use: is another agentfenced running?", path)
		}
		os.Remove(path)
	}
	// The socket is created under a tight umask so there is no moment in
	// which others could connect.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	return l, os.Chmod(path, 0o600)
}

// Serve serves on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, cerr
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

func (s *Server) authz(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(Peer)
		if !ok {
			writeError(w, &attribution.Error{Code: attribution.CodeUnauthorized, Message: "caller has no peer credentials"})
			return
		}
		if err := s.policy.authorize(p); err != nil {
			s.log.Warn("api: refused caller", "peer", p.String(), "path", r.URL.Path, "err", err)
			writeError(w, &attribution.Error{Code: attribution.CodeUnauthorized, Message: err.Error()})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func caller(r *http.Request) string {
	p, _ := r.Context().Value(peerKey{}).(Peer)
	return p.String()
}

const maxBody = 1 << 20

func (s *Server) open(w http.ResponseWriter, r *http.Request) {
	var req attribution.OpenRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, &attribution.Error{Code: attribution.CodeInvalid, Message: "bad JSON body: " + err.Error()})
		return
	}
	if dec.More() {
		writeError(w, &attribution.Error{Code: attribution.CodeInvalid, Message: "bad JSON body: trailing data"})
		return
	}
	sess, err := s.reg.Open(req, caller(r))
	if err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("session opened", "id", sess.ID, "mode", sess.Mode, "rules", len(sess.Allow), "caller", caller(r))
	writeJSON(w, http.StatusCreated, sess)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.reg.List())
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	sess, err := s.reg.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sess)
}

func (s *Server) close(w http.ResponseWriter, r *http.Request) {
	if err := s.reg.Close(r.PathValue("id"), caller(r)); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("session closed", "id", r.PathValue("id"), "caller", caller(r))
	w.WriteHeader(http.StatusNoContent)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var e *attribution.Error
	if !errors.As(err, &e) {
		e = &attribution.Error{Code: "internal", Message: err.Error()}
	}
	status := http.StatusInternalServerError
	switch e.Code {
	case attribution.CodeInvalid:
		status = http.StatusBadRequest
	case attribution.CodeNotFound:
		status = http.StatusNotFound
	case attribution.CodeUnauthorized:
		status = http.StatusForbidden
	case attribution.CodeCapacity:
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]*attribution.Error{"error": e})
}
