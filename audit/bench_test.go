package audit

import "testing"

// BenchmarkEncodeJSON measures the native JSON (canonical) encoding that
// every record goes through in Chain.Stamp.
func BenchmarkEncodeJSON(b *testing.B) {
	r := sampleRecord(7)
	r.Seq, r.PrevHash = 123456, HashLine([]byte("x"))
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendCanonical(buf[:0], &r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkChainStamp is encoding plus hashing, the per-record cost Emit
// adds on the caller's goroutine.
func BenchmarkChainStamp(b *testing.B) {
	c, _ := OpenChain("")
	r := sampleRecord(7)
	var line []byte // the pipeline's pooled buffer
	b.ReportAllocs()
	for b.Loop() {
		rr := r
		var err error
		if line, err = c.Stamp(line[:0], &rr); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
