package sink

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/agentfence/agentfence/audit"
)

// syslogTransport sends RFC 5424 messages over TCP with octet-counting
// framing (RFC 6587 §3.4.1), or over TLS (RFC 5425, same framing).
type syslogTransport struct {
	addr     string
	tls      *tls.Config // nil for plain TCP
	appName  string
	hostname string
	facility int
	procID   string
	timeout  time.Duration
	conn     net.Conn
	bw       *bufio.Writer
}

func newSyslogTransport(c *audit.SyslogConfig) (*syslogTransport, error) {
	t := &syslogTransport{
		addr:     c.Address,
		appName:  c.AppName,
		hostname: c.Hostname,
		facility: audit.DefaultSyslogFacility,
		procID:   strconv.Itoa(os.Getpid()),
		timeout:  audit.DurationOr(c.Timeout, audit.DefaultTimeout),
	}
	if t.appName == "" {
		t.appName = audit.DefaultSyslogAppName
	}
	if c.Facility != nil {
		t.facility = *c.Facility
	}
	if c.TLS {
		cfg, err := tlsConfig("syslog", c.CAFile, c.CertFile, c.KeyFile, c.ServerName, false)
		if err != nil {
			return nil, err
		}
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(c.Address)
			cfg.ServerName = host
		}
		t.tls = cfg
	}
	return t, nil
}

func (t *syslogTransport) dial(ctx context.Context) error {
	d := &net.Dialer{Timeout: t.timeout, KeepAlive: 30 * time.Second}
	var conn net.Conn
	var err error
	if t.tls != nil {
		td := &tls.Dialer{NetDialer: d, Config: t.tls}
		conn, err = td.DialContext(ctx, "tcp", t.addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", t.addr)
	}
	if err != nil {
		return err
	}
	t.conn, t.bw = conn, bufio.NewWriterSize(conn, 64<<10)
	return nil
}

// alive checks, without blocking, that the receiver has not closed the
// connection. TCP syslog has no application acknowledgement, so writing
// into a half-closed socket would "succeed" and lose the batch; this
// catches the common case of a restarted receiver before writing.
func (t *syslogTransport) alive() bool {
	if t.tls != nil {
		// A TLS read would consume record bytes; rely on the write error
		// path and the deadline instead.
		return true
	}
	if err := t.conn.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
		return false
	}
	var b [1]byte
	_, err := t.conn.Read(b[:])
	t.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (t *syslogTransport) Send(ctx context.Context, batch []message) error {
	if t.conn != nil && !t.alive() {
		t.drop()
	}
	if t.conn == nil {
		if err := t.dial(ctx); err != nil {
			return err
		}
	}
	t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
	var frame []byte
	for _, m := range batch {
		frame = t.appendMessage(frame[:0], m)
		t.bw.WriteString(strconv.Itoa(len(frame)))
		t.bw.WriteByte(' ')
		t.bw.Write(frame)
	}
	if err := t.bw.Flush(); err != nil {
		t.drop()
		return err
	}
	return nil
}

func (t *syslogTransport) drop() {
	if t.conn != nil {
		t.conn.Close()
	}
	t.conn, t.bw = nil, nil
}

// appendMessage formats one RFC 5424 message (no trailing newline; the
// octet count delimits it).
func (t *syslogTransport) appendMessage(b []byte, m message) []byte {
	r := m.rec
	pri := t.facility*8 + severity(r)
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(pri), 10)
	b = append(b, ">1 "...)
	b = r.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	host := t.hostname
	if host == "" {
		host = r.Host
	}
	b = append(b, headerField(host, 255)...)
	b = append(b, ' ')
	b = append(b, headerField(t.appName, 48)...)
	b = append(b, ' ')
	b = append(b, headerField(t.procID, 128)...)
	b = append(b, ' ')
	b = append(b, headerField(r.Kind, 32)...)
	b = append(b, " - "...) // no structured data: the payload carries it all
	return append(b, m.payload...)
}

// headerField makes s a valid RFC 5424 header field: printable US-ASCII
// without spaces, at most n octets, "-" when empty.
func headerField(s string, n int) string {
	if s == "" {
		return "-"
	}
	ok := true
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 {
			ok = false
			break
		}
	}
	if !ok {
		s = strings.Map(func(r rune) rune {
			if r < 33 || r > 126 {
				return '_'
			}
			return r
		}, s)
	}
	if len(s) > n {
		s = s[:n]
	}
	return s
}

// severity maps a record to an RFC 5424 severity so receivers can route
// denials without parsing the payload.
func severity(r *audit.Record) int {
	switch {
	case r.Kind == audit.KindGap:
		return 3 // error: audit records were lost
	case r.Outcome == nil:
		return 6 // informational
	case r.Outcome.Verdict == audit.VerdictDenied:
		return 4 // warning
	case r.Outcome.Verdict == audit.VerdictWouldDeny:
		return 5 // notice
	}
	return 6
}

func (t *syslogTransport) Close() error {
	if t.conn == nil {
		return nil
	}
	err := t.bw.Flush()
	t.drop()
	return err
}
