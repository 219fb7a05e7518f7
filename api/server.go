// Package api is the daemon's local HTTP+JSON API on a unix socket (the
// wire format is api/v1, the client api/client). Callers are identified by the kernel's peer
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
	"slices"
	"time"

	"golang.org/x/sys/unix"

	v1 "github.com/agentfence/agentfence/api/v1"
	"github.com/agentfence/agentfence/session"
)

// Peer is the process on the other end of a unix socket connection.
type Peer struct {
	PID      int32
	UID, GID uint32
}

func (p Peer) String() string { return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID) }

// Policy decides which local peers may use the API. Remote callers are
// authorised by the mTLS configuration (SPIFFE IDs).
type Policy struct {
	// UIDs, GIDs and Exes admit callers; a peer matching any one is allowed.
	UIDs []uint32
	GIDs []uint32
	Exes []string
	// MemberOf reports the session a process belongs to. Session members
	// are admitted whatever their credentials, because the registry lets
	// them do only what narrows: open child sessions, narrow or revoke
	// their own.
	MemberOf func(pid int) (string, bool)
}

func (p Policy) authorize(peer Peer) (session.Caller, error) {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", peer.PID))
	c := session.Caller{ID: peer.String(), PID: int(peer.PID), UID: int(peer.UID)}
	if exe != "" {
		c.ID += " exe=" + exe
	}
	if slices.Contains(p.UIDs, peer.UID) || slices.Contains(p.GIDs, peer.GID) || (exe != "" && slices.Contains(p.Exes, exe)) {
		return c, nil
	}
	if p.MemberOf != nil {
		if id, ok := p.MemberOf(int(peer.PID)); ok {
			c.ID += " session=" + id
			return c, nil
		}
	}
	return c, fmt.Errorf("caller %s is not allowed to use the agentfence API", c.ID)
}

type peerKey struct{}
type callerKey struct{}

// Server serves the API.
type Server struct {
	reg    *session.Registry
	policy Policy
	log    *slog.Logger
	srv    *http.Server
}

// NewServer makes a server for reg.
func NewServer(reg *session.Registry, policy Policy, log *slog.Logger) *Server {
	s := &Server{reg: reg, policy: policy, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions", s.open)
	mux.HandleFunc("GET /v1/sessions", s.list)
	mux.HandleFunc("GET /v1/sessions/{id}", s.get)
	mux.HandleFunc("POST /v1/sessions/{id}/bind", s.bind)
	mux.HandleFunc("POST /v1/sessions/{id}/narrow", s.narrow)
	mux.HandleFunc("POST /v1/sessions/{id}/revoke", s.revoke)
	mux.HandleFunc("DELETE /v1/sessions/{id}", s.close)
	s.srv = &http.Server{
		Handler:           s.authz(mux),
		ReadHeaderTimeout: 10 * time.Second,
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

// Serve serves on l until Shutdown. l is a unix socket listener or an mTLS
// listener (ListenMTLS).
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

// authz identifies the caller: by SPIFFE ID on an mTLS connection (the TLS
// handshake already checked it against the allowed IDs), else by the
// kernel's peer credentials.
func (s *Server) authz(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c session.Caller
		if id, ok := SPIFFEID(r); ok {
			c = session.Caller{ID: id.String(), UID: -1}
		} else if p, ok := r.Context().Value(peerKey{}).(Peer); ok {
			var err error
			if c, err = s.policy.authorize(p); err != nil {
				s.log.Warn("api: refused caller", "caller", c.ID, "path", r.URL.Path, "err", err)
				writeError(w, &v1.Error{Code: v1.CodeUnauthorized, Message: err.Error()})
				return
			}
		} else {
			writeError(w, &v1.Error{Code: v1.CodeUnauthorized, Message: "caller has no identity"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

func caller(r *http.Request) session.Caller {
	c, _ := r.Context().Value(callerKey{}).(session.Caller)
	return c
}

const maxBody = 1 << 20

// decode reads a JSON body strictly: unknown fields and trailing data are
// errors naming the problem.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err != nil {
		writeError(w, &v1.Error{Code: v1.CodeInvalid, Message: "bad JSON body: " + err.Error()})
		return false
	}
	return true
}

func (s *Server) open(w http.ResponseWriter, r *http.Request) {
	var req v1.OpenRequest
	if !decode(w, r, &req) {
		return
	}
	sess, err := s.reg.Open(req, caller(r))
	if err != nil {
		writeError(w, err)
		return
	}
	// The audit trail records every lifecycle step with its actor; the
	// log repeats them only when asked for (debug).
	s.log.Debug("session opened", "id", sess.ID, "mode", sess.Mode, "rules", len(sess.Scope), "parent", sess.Parent, "caller", caller(r).ID)
	writeJSON(w, http.StatusCreated, sess)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := caller(r)
	writeJSON(w, http.StatusOK, s.reg.List(session.Filter{State: v1.State(q.Get("state")), Origin: v1.OriginKind(q.Get("origin")),
		Agent: q.Get("agent"), Parent: q.Get("parent"), Label: q.Get("label"), Caller: &c}))
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	sess, err := s.reg.Get(r.PathValue("id"), caller(r))
	respond(w, http.StatusOK, sess, err)
}

func (s *Server) bind(w http.ResponseWriter, r *http.Request) {
	var req v1.BindRequest
	if !decode(w, r, &req) {
		return
	}
	sess, err := s.reg.Bind(r.PathValue("id"), req, caller(r))
	respond(w, http.StatusOK, sess, err)
}

func (s *Server) narrow(w http.ResponseWriter, r *http.Request) {
	var req v1.NarrowRequest
	if !decode(w, r, &req) {
		return
	}
	sess, err := s.reg.Narrow(r.PathValue("id"), req, caller(r))
	respond(w, http.StatusOK, sess, err)
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	sess, err := s.reg.Revoke(r.PathValue("id"), caller(r))
	if err == nil {
		s.log.Debug("session revoked", "id", sess.ID, "caller", caller(r).ID)
	}
	respond(w, http.StatusOK, sess, err)
}

func (s *Server) close(w http.ResponseWriter, r *http.Request) {
	if err := s.reg.Close(r.PathValue("id"), caller(r)); err != nil {
		writeError(w, err)
		return
	}
	s.log.Debug("session closed", "id", r.PathValue("id"), "caller", caller(r).ID)
	w.WriteHeader(http.StatusNoContent)
}

func respond(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

var statusOf = map[v1.Code]int{
	v1.CodeInvalid:      http.StatusBadRequest,
	v1.CodeNotFound:     http.StatusNotFound,
	v1.CodeConflict:     http.StatusConflict,
	v1.CodeForbidden:    http.StatusForbidden,
	v1.CodeUnauthorized: http.StatusForbidden,
	v1.CodeCapacity:     http.StatusServiceUnavailable,
}

func writeError(w http.ResponseWriter, err error) {
	var e *v1.Error
	if !errors.As(err, &e) {
		e = &v1.Error{Code: v1.CodeInternal, Message: err.Error()}
	}
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, map[string]*v1.Error{"error": e})
}
