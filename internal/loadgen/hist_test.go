package loadgen

import (
	"testing"
	"time"
)

func TestBucketsTileTheRange(t *testing.T) {
	// Every bucket starts right after the previous one ends, and a value
	// lands in the bucket whose range holds it.
	for i := range numBuckets - 1 {
		hi := bucketHigh(i)
		if got := bucketOf(hi); got != i {
			t.Fatalf("bucketOf(bucketHigh(%d)=%d) = %d", i, hi, got)
		}
		if got := bucketOf(hi + 1); got != i+1 {
			t.Fatalf("bucketOf(%d) = %d, want %d (next bucket)", hi+1, got, i+1)
		}
	}
	if got := bucketOf(1 << 62); got != numBuckets-1 {
		t.Errorf("huge value in bucket %d, want the last, %d", got, numBuckets-1)
	}
}

func TestBucketRelativeError(t *testing.T) {
	// The point of log-linear buckets: the width of a bucket is at most
	// 1/32 of the values in it, at every magnitude.
	for i := subBuckets; i < numBuckets-1; i++ {
		lo, hi := bucketHigh(i-1)+1, bucketHigh(i)
		if width := hi - lo + 1; float64(width)/float64(lo) > 1.0/subBuckets {
			t.Fatalf("bucket %d [%d, %d] is %d wide, more than 1/%d of its start", i, lo, hi, width, subBuckets)
		}
	}
}

func TestQuantiles(t *testing.T) {
	tests := []struct {
		name   string
		values func(record func(time.Duration))
		q      float64
		want   time.Duration // exact answer; the histogram may err high by 1/32
	}{
		{"uniform 1..1000µs p50", uniform(1000), 0.50, 500 * time.Microsecond},
		{"uniform 1..1000µs p90", uniform(1000), 0.90, 900 * time.Microsecond},
		{"uniform 1..1000µs p99", uniform(1000), 0.99, 990 * time.Microsecond},
		{"uniform 1..1000µs p100", uniform(1000), 1, 1000 * time.Microsecond},
		{"one outlier does not move p99", func(rec func(time.Duration)) {
			for range 999 {
				rec(100 * time.Microsecond)
			}
			rec(time.Second)
		}, 0.99, 100 * time.Microsecond},
		{"but is the max", func(rec func(time.Duration)) {
			for range 999 {
				rec(100 * time.Microsecond)
			}
			rec(time.Second)
		}, 1, time.Second},
		{"small exact values", func(rec func(time.Duration)) {
			for v := range 10 {
				rec(time.Duration(v + 1))
			}
		}, 0.5, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			tt.values(h.Record)
			got := h.Quantile(tt.q)
			if got < tt.want || float64(got-tt.want) > float64(tt.want)/subBuckets {
				t.Errorf("Quantile(%v) = %v, want %v (+ at most 1/%d)", tt.q, got, tt.want, subBuckets)
			}
		})
	}
}

func uniform(n int) func(func(time.Duration)) {
	return func(rec func(time.Duration)) {
		for i := 1; i <= n; i++ {
			rec(time.Duration(i) * time.Microsecond)
		}
	}
}

func TestHistogramMergeMeanMax(t *testing.T) {
	var a, b, all Histogram
	for i := 1; i <= 100; i++ {
		d := time.Duration(i) * time.Millisecond
		all.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	if a != all {
		t.Fatal("merging two halves differs from recording all")
	}
	if a.Count() != 100 || a.Max() != 100*time.Millisecond || a.Mean() != 50500*time.Microsecond {
		t.Errorf("count %d max %v mean %v, want 100, 100ms, 50.5ms", a.Count(), a.Max(), a.Mean())
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 || empty.Mean() != 0 || empty.Max() != 0 {
		t.Error("empty histogram reports non-zero values")
	}
	empty.Record(-time.Second)
	if empty.Max() != 0 || empty.Quantile(1) != 0 {
		t.Error("a negative duration is not recorded as zero")
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := new(Histogram)
	if n := testing.AllocsPerRun(1000, func() { h.Record(1234 * time.Microsecond) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	b.ReportAllocs()
	var h Histogram
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(i&0xFFFFF) * time.Microsecond)
	}
}
