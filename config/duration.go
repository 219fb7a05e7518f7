package config

import (
	"encoding/json"
	"reflect"
	"strconv"
	"time"
)

// Duration is a time.Duration that is written in the config file as a Go
// duration string such as "30s", "5m" or "24h". Bare numbers are rejected so
// that "30" can never silently mean 30 nanoseconds.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does ("1h0m0s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

var durationType = reflect.TypeFor[Duration]()

// UnmarshalJSON reads a duration string. On bad input it returns a
// *json.UnmarshalTypeError so that the JSON decoder records which field held
// the bad value; Parse turns that into "field: bad value" errors.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{
			Value: string(b),
			Type:  durationType,
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{
			Value: strconv.Quote(s),
			Type:  durationType,
		}
	}
	*d = Duration(v)
	return nil
}
