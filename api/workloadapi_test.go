package api

import (
	"crypto/ecdsa"
	"net"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/agentfence/agentfence/config"
)

// agentStub is the part of a SPIFFE Workload API server that an X.509
// source uses: one FetchX509SVID answer, then the stream stays open as an
// agent's does. (go-spiffe's own fake is in an internal package.)
type agentStub struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (a *agentStub) FetchX509SVID(_ *workload.X509SVIDRequest, s grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	// The Workload API requires this header of every client.
	if md, _ := metadata.FromIncomingContext(s.Context()); len(md.Get("workload.spiffe.io")) == 0 {
		return status.Error(codes.InvalidArgument, "security header missing")
	}
	if err := s.Send(a.resp); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

// With the daemon's SVID from a Workload API, the mTLS listener serves the
// allowed caller, refuses another, and presents the SVID the agent gave.
func TestMTLSWorkloadAPI(t *testing.T) {
	f := newMTLSFixture(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, &agentStub{resp: &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    mtlsServerID,
		X509Svid:    f.server.Certificates[0].Raw,
		X509SvidKey: mtlsPKCS8(t, f.server.PrivateKey.(*ecdsa.PrivateKey)),
		Bundle:      f.ca.cert.Raw,
	}}}})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	cfg := f.config()
	cfg.SVID = config.SVID{WorkloadAPISocket: sock}
	url := serveMTLS(t, cfg)

	serverOK := tlsconfig.AuthorizeID(spiffeid.RequireFromString(mtlsServerID))
	code, body, err := mtlsGet(t, url, tlsconfig.MTLSClientConfig(f.ca.issue(t, mtlsAllowedID), f.ca.bundle(), serverOK))
	if err != nil || code != 200 || body != mtlsAllowedID {
		t.Fatalf("allowed client: %d %q %v, want 200 %q", code, body, err, mtlsAllowedID)
	}
	if _, _, err := mtlsGet(t, url, tlsconfig.MTLSClientConfig(f.ca.issue(t, mtlsRogueID), f.ca.bundle(), serverOK)); err == nil {
		t.Fatal("rogue client served")
	}
	// A client that expects another server identity refuses this one: the
	// listener presents the SVID from the Workload API.
	other := tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/someone-else"))
	if _, _, err := mtlsGet(t, url, tlsconfig.MTLSClientConfig(f.ca.issue(t, mtlsAllowedID), f.ca.bundle(), other)); err == nil {
		t.Fatal("the listener's SVID passed for another identity")
	}
}
