//go:build !unix

package loadgen

import "time"

type cpuTime struct{ user, system time.Duration }

func (c cpuTime) sub(o cpuTime) cpuTime { return cpuTime{c.user - o.user, c.system - o.system} }

// processCPU is not measured on this platform; results show zero.
func processCPU() cpuTime { return cpuTime{} }
