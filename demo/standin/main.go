// Command standin is a tiny server for the demo, on loopback only: an HTTP
// server standing in for a local MCP server or a SaaS API, or (-dns) a DNS
// server answering A queries from a fixed table.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "127.0.0.1:18080", "loopback address to listen on")
	name := flag.String("name", "mcp-server", "what this stands in for")
	records := flag.String("dns", "", "serve DNS instead: NAME=IPV4,... (UDP)")
	tlsName := flag.String("tls-name", "", "serve HTTPS with a fresh self-signed certificate for this name")
	certOut := flag.String("cert-out", "", "with -tls-name: write the certificate (PEM) here for clients to trust")
	key := flag.String("key", "", "create tickets (POST) only for this bearer token, the SaaS key")
	flag.Parse()
	if *records != "" {
		return serveDNS(ctx, *listen, *records)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *tlsName != "" {
		cert, err := selfSigned(*tlsName, *certOut)
		if err != nil {
			return err
		}
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	var tickets atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fmt.Fprintf(w, "%s: 3 open tickets\n", *name)
			return
		}
		var t struct{ Title string }
		if r.Header.Get("Authorization") != "Bearer "+*key || json.NewDecoder(r.Body).Decode(&t) != nil {
			http.Error(w, *name+": no valid key or ticket", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "%s: created ticket TCK-%d %q\n", *name, 1041+tickets.Add(1), t.Title)
	})}
	go func() { <-ctx.Done(); srv.Close() }()
	slog.Info("standin listening", "name", *name, "addr", l.Addr().String())
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// selfSigned makes a certificate for name and writes it to certOut.
func selfSigned(name, certOut string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if certOut != "" {
		if err := os.WriteFile(certOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return tls.Certificate{}, err
		}
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func serveDNS(ctx context.Context, addr, records string) error {
	table := map[string]net.IP{}
	for _, kv := range strings.Split(records, ",") {
		name, ip, ok := strings.Cut(kv, "=")
		if !ok || net.ParseIP(ip).To4() == nil {
			return fmt.Errorf("-dns: bad record %q (want NAME=IPV4)", kv)
		}
		table[dns.Fqdn(strings.ToLower(name))] = net.ParseIP(ip).To4()
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, question := range q.Question {
			if ip, ok := table[strings.ToLower(question.Name)]; ok && question.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip})
			}
		}
		w.WriteMsg(m)
	})}
	go func() { <-ctx.Done(); srv.Shutdown() }()
	slog.Info("standin listening", "name", "dns", "addr", pc.LocalAddr().String())
	return srv.ActivateAndServe()
}
