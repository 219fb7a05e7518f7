package httpwire

import (
	"testing"
	"time"
)

func benchConn(b *testing.B, chunks []chunk) {
	_, calls := run(testOpts, chunks)
	if len(calls) == 0 {
		b.Fatal("no calls in the capture")
	}
	var bytes int64
	for _, ch := range chunks {
		bytes += int64(ch.n)
	}
	b.SetBytes(bytes)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c := NewConn(testOpts, false)
		for _, ch := range chunks {
			c.Feed(ch.dir, ch.data, ch.n, ch.at)
		}
		c.Close(t0.Add(time.Hour))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(calls)), "ns/call")
}

func BenchmarkConnH1(b *testing.B) {
	chunks, _ := captureExchange(b, false, h1Requests()...)
	benchConn(b, chunks)
}

func BenchmarkConnH2(b *testing.B) {
	chunks, _ := captureExchange(b, true, h2Requests()...)
	benchConn(b, chunks)
}
