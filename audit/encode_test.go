package audit

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// The hand-written encoder (encode.go) must write what encoding/json
// writes for a Record with HTML escaping off. Records here are filled by
// reflection, member by member, so a member added to record.go is filled
// (and compared) without this file changing: forgetting its line in
// encode.go fails these tests.

// reference is encoding/json's canonical encoding of r.
func reference(r *Record) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// source decides how fill fills a record: whether an optional part is
// there, how long a list is, which string and number go where.
type source interface {
	bit() bool
	n() uint64
	str() string
}

// full fills every member, with awkward strings.
type full struct{ i int }

var awkward = []string{
	"plain", `q"uote\back/slash`, "ctl\x00\x01\x07\b\t\n\v\f\r\x1b\x1f end", "<script>&amp;</script>",
	"del\x7f é 日本 🙂", "ls\u2028ps\u2029x", "bad\xff\xfe utf8 \xc3 \xe2\x80 \xed\xa0\x80", "trailing\xe2",
}

func (*full) bit() bool { return true }
func (f *full) n() uint64 {
	f.i++
	return uint64(f.i)*0x9e3779b97f4a7c15 | 1
}
func (f *full) str() string { f.i++; return awkward[f.i%len(awkward)] }

// bytesSource draws from fuzzed bytes and strings; once the bytes run out
// everything optional is absent.
type bytesSource struct {
	data []byte
	strs [3]string
	i    int
}

func (s *bytesSource) byte() byte {
	if s.i >= len(s.data) {
		return 0
	}
	s.i++
	return s.data[s.i-1]
}
func (s *bytesSource) bit() bool { return s.byte()&1 != 0 }
func (s *bytesSource) n() uint64 {
	var v uint64
	for range 1 + s.byte()%8 {
		v = v<<8 | uint64(s.byte())
	}
	return v
}
func (s *bytesSource) str() string { return s.strs[s.byte()%3] }

type randSource struct{ r *rand.Rand }

func (s randSource) bit() bool   { return s.r.IntN(2) == 0 }
func (s randSource) n() uint64   { return s.r.Uint64() >> s.r.IntN(64) }
func (s randSource) str() string { return awkward[s.r.IntN(len(awkward))][:s.r.IntN(4)] }

var timeType = reflect.TypeFor[time.Time]()

// fill sets v from src: pointers, lists and maps present when src says
// so (lists nil or empty or not), every scalar from src.
func fill(v reflect.Value, src source) {
	if v.Type() == timeType {
		t := time.Unix(int64(src.n()%(300<<30)), int64(src.n()%1e9)).UTC()
		if src.bit() {
			// Offsets of 24 hours and more encoding/json refuses.
			t = t.In(time.FixedZone("x", int(src.n()%200_000)-100_000))
		}
		v.Set(reflect.ValueOf(t))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if src.bit() {
			v.Set(reflect.New(v.Type().Elem()))
			fill(v.Elem(), src)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i), src)
		}
	case reflect.Slice:
		if !src.bit() {
			return
		}
		n := int(src.n() % 3)
		v.Set(reflect.MakeSlice(v.Type(), n, n))
		for i := range n {
			fill(v.Index(i), src)
		}
	case reflect.Map:
		if !src.bit() {
			return
		}
		v.Set(reflect.MakeMap(v.Type()))
		for range src.n() % 4 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(k, src)
			fill(e, src)
			v.SetMapIndex(k, e)
		}
	case reflect.String:
		v.SetString(src.str())
	case reflect.Bool:
		v.SetBool(src.bit())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(src.n())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(src.n()))
	default:
		panic("fill: no case for " + v.Type().String())
	}
}

func checkCanonical(t *testing.T, r *Record) {
	t.Helper()
	want, wantErr := reference(r)
	got, err := AppendCanonical([]byte("prefix"), r)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("error %v, encoding/json's %v, for %+v", err, wantErr, r)
	}
	if err == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("\n got %s\nwant prefix%s", got, want)
	}
}

// TestCanonicalCoversEveryMember fills every member of a record, at every
// depth, and compares.
func TestCanonicalCoversEveryMember(t *testing.T) {
	var r Record
	fill(reflect.ValueOf(&r).Elem(), &full{})
	r.Time = r.Time.UTC() // a non-UTC zone is the slow path, checked below
	checkCanonical(t, &r)
	var unset []string
	walkZero(reflect.ValueOf(r), "Record", &unset)
	if len(unset) > 0 {
		t.Fatalf("fill left members zero, so they were not compared: %v", unset)
	}
}

// walkZero lists the members of v that are zero.
func walkZero(v reflect.Value, path string, out *[]string) {
	if v.IsZero() {
		*out = append(*out, path)
		return
	}
	if v.Type() == timeType {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		walkZero(v.Elem(), path, out)
	case reflect.Struct:
		for i := range v.NumField() {
			walkZero(v.Field(i), path+"."+v.Type().Field(i).Name, out)
		}
	case reflect.Slice:
		for i := range v.Len() {
			walkZero(v.Index(i), path+"[]", out)
		}
	}
}

// TestCanonicalRandomRecords compares records with parts present and
// absent, lists nil, empty and not, zero and non-zero numbers, times in
// other zones and out of encoding/json's range.
func TestCanonicalRandomRecords(t *testing.T) {
	for seed := range uint64(3000) {
		var r Record
		fill(reflect.ValueOf(&r).Elem(), randSource{rand.New(rand.NewPCG(seed, 7))})
		checkCanonical(t, &r)
	}
	for _, year := range []int{-1, 0, 9999, 10000} {
		r := Record{Time: time.Date(year, 1, 2, 3, 4, 5, 6, time.UTC)}
		checkCanonical(t, &r)
	}
}

// FuzzCanonicalMatchesEncodingJSON fills a record from fuzzed bytes and
// strings (testdata/fuzz/FuzzCanonicalMatchesEncodingJSON holds the seeds).
func FuzzCanonicalMatchesEncodingJSON(f *testing.F) {
	f.Add([]byte{0xff, 3, 1, 0, 7, 0xff, 0xfe, 2, 9, 1, 1, 1, 0, 0x80, 5}, "a<b>&c", "\xff\u2028", "x\x00\n\"\\")
	f.Add(bytes.Repeat([]byte{1, 2, 0xff}, 200), "ok", "", "日本")
	f.Fuzz(func(t *testing.T, data []byte, a, b, c string) {
		var r Record
		fill(reflect.ValueOf(&r).Elem(), &bytesSource{data: data, strs: [3]string{a, b, c}})
		checkCanonical(t, &r)
	})
}
