package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram is a log-linear latency histogram in nanoseconds, in the
// manner of HdrHistogram: every power-of-two range is cut into subBuckets
// equal buckets, so a recorded value is known to within 1/subBuckets
// (about 3 %) at any magnitude, from nanoseconds to minutes, in a fixed
// array. Record is a few arithmetic operations and never allocates, which
// is what lets every response be recorded at full load.
//
// The zero value is empty and ready. A Histogram is not safe for concurrent
// use: each socket owns one and Merge combines them at the end.
type Histogram struct {
	counts [numBuckets]uint64
	n      uint64
	sum    uint64
	max    uint64
}

const (
	subBits    = 5
	subBuckets = 1 << subBits
	// maxExp is the largest power of two kept apart; larger values land in
	// the last bucket (2^40 ns is about 18 minutes, far past any timeout).
	maxExp     = 40
	numBuckets = (maxExp - subBits + 1) * subBuckets
)

// bucketOf returns the bucket index of v.
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - 1 // v is in [2^e, 2^(e+1))
	if e >= maxExp {
		return numBuckets - 1
	}
	return (e-subBits+1)*subBuckets + int(v>>(e-subBits)) - subBuckets
}

// bucketHigh returns the largest value that falls in bucket i.
func bucketHigh(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	e := i/subBuckets + subBits - 1
	sub := uint64(i % subBuckets)
	low := (subBuckets + sub) << (e - subBits)
	return low + 1<<(e-subBits) - 1
}

// Record adds one observation. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += v
	h.max = max(h.max, v)
}

// Merge adds every observation of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest observation, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the arithmetic mean, exactly.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Quantile returns the q-quantile (0 < q ≤ 1): the smallest value v such
// that at least q of the observations are ≤ v, rounded up to the top of
// its bucket (so it errs high, never low, by at most 1/32) and never above
// Max. It returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), h.max))
		}
	}
	return time.Duration(h.max)
}
