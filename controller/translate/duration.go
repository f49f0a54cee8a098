package translate

import (
	"fmt"
	"regexp"
	"time"
)

// durationRE is GEP-2257's grammar of Gateway API durations: one to four
// groups of up to five digits and a unit among h, m, s and ms.
var durationRE = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// parseDuration parses a Gateway API (and Ambit traffic) duration such as
// "1h", "1m30s" or "250ms".
func parseDuration(s string) (time.Duration, error) {
	if !durationRE.MatchString(s) {
		return 0, fmt.Errorf("%w: %q (want e.g. 1s, 1m30s, 250ms)", ErrInvalidDuration, s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %q: %v", ErrInvalidDuration, s, err)
	}
	return d, nil
}

// optDuration parses an optional duration; "" is unset.
func optDuration(s string) (*time.Duration, error) {
	if s == "" {
		return nil, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return nil, err
	}
	return &d, nil
}
