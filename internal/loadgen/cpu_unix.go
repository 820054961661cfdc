//go:build unix

package loadgen

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time the process has used.
type cpuTime struct{ user, system time.Duration }

func (c cpuTime) sub(o cpuTime) cpuTime {
	return cpuTime{c.user - o.user, c.system - o.system}
}

// processCPU reads the generator's own CPU use with getrusage, so a run can
// report whether the generator, rather than the server, was the limit.
func processCPU() cpuTime {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return cpuTime{}
	}
	return cpuTime{time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())}
}
