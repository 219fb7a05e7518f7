//go:build linux

package tlsprobe

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/agentfence/agentfence/internal/privtest"
)

// goClientSrc posts x=1 to the URL in its first argument, trusting the CA
// in the file named by the second, and prints the response's body. Given
// a third argument n, it posts once more to warm up, then n times on the
// same connection, and prints the nanoseconds the n took instead. With
// WRAP set in its environment, its TLS runs over a wrapper net.Conn; with
// PAR=n, n goroutines post 5 times each to URL/par/i at once.
const goClientSrc = `package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// wrapped is a net.Conn that is not a *net.TCPConn, as a proxy or a
// metering layer would put under crypto/tls.
type wrapped struct{ net.Conn }

func main() {
	pem, _ := os.ReadFile(os.Args[2])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	if os.Getenv("WRAP") != "" {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			return wrapped{c}, err
		}
	}
	c := &http.Client{Transport: tr}
	post := func(out io.Writer) {
		resp, err := c.Post(os.Args[1], "text/plain", strings.NewReader("x=1"))
		if err != nil {
			panic(err)
		}
		io.Copy(out, resp.Body)
		resp.Body.Close()
	}
	if par, _ := strconv.Atoi(os.Getenv("PAR")); par > 0 {
		// par goroutines, each on its own connection, 5 requests each,
		// at once: Reads park and resume on other threads.
		var wg sync.WaitGroup
		for i := 0; i < par; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := &http.Client{Transport: &http.Transport{TLSClientConfig: tr.TLSClientConfig.Clone()}}
				for j := 0; j < 5; j++ {
					resp, err := c.Post(fmt.Sprintf("%s/par/%d", os.Args[1], i), "text/plain", strings.NewReader("x=1"))
					if err != nil {
						panic(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}(i)
		}
		wg.Wait()
		return
	}
	if len(os.Args) < 4 {
		post(os.Stdout)
		return
	}
	n, _ := strconv.Atoi(os.Args[3])
	post(io.Discard)
	start := time.Now()
	for i := 0; i < n; i++ {
		post(io.Discard)
	}
	fmt.Println(time.Since(start).Nanoseconds())
}
`

var goClients struct {
	once sync.Once
	dir  string
	err  error
}

// TestMain removes the Go clients goClient built.
func TestMain(m *testing.M) {
	code := m.Run()
	if goClients.dir != "" {
		os.RemoveAll(goClients.dir)
	}
	os.Exit(code)
}

// goClient builds goClientSrc once per test binary, normally ("client"),
// stripped ("stripped", -s -w) and stripped position-independent ("pie",
// whose pclntab leaves runtime.text for the loader to fill in), without
// cgo, and where gcc is installed stripped and linked by it ("external",
// with C code before runtime.text), and returns the path of the one named.
func goClient(t testing.TB, name string) string {
	t.Helper()
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no Go toolchain to build the clients")
	}
	if privtest.Emulated() {
		t.Skip("building Go clients from a cold cache under emulation takes minutes")
	}
	goClients.once.Do(func() {
		dir, err := os.MkdirTemp("", "af-goclient-")
		if err != nil {
			goClients.err = err
			return
		}
		os.Chmod(dir, 0o755)
		goClients.dir = dir
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module client\ngo 1.21\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "main.go"), []byte(goClientSrc), 0o644)
		builds := map[string][]string{"client": nil, "stripped": {"-ldflags=-s -w"},
			"pie": {"-buildmode=pie", "-ldflags=-s -w"}}
		if _, err := exec.LookPath("gcc"); err == nil {
			builds["external"] = []string{"-ldflags=-linkmode=external -s -w"}
		}
		for out, flags := range builds {
			cgo := "CGO_ENABLED=0"
			if out == "external" {
				cgo = "CGO_ENABLED=1"
			}
			cmd := exec.Command(gotool, append(append([]string{"build", "-o", out}, flags...), ".")...)
			cmd.Dir, cmd.Env = dir, append(os.Environ(), cgo, "GOFLAGS=-mod=mod")
			if b, err := cmd.CombinedOutput(); err != nil {
				goClients.err = errors.New("go build: " + err.Error() + "\n" + string(b))
				return
			}
		}
	})
	if goClients.err != nil {
		t.Fatal(goClients.err)
	}
	bin := filepath.Join(goClients.dir, name)
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no %s client: %v", name, err)
	}
	return bin
}
