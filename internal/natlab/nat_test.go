//go:build linux

package natlab

import (
	"testing"
	"time"
)

// TestNATTypes builds one router of every kind and checks with the probe
// that each behaves as RFC 4787 defines it. The table is written out by
// hand so that a change of behaviour is a visible diff.
func TestNATTypes(t *testing.T) {
	tests := []struct {
		router RouterSpec // zero Name: a public host
		want   Behavior
	}{
		{RouterSpec{}, Behavior{Translated: false, Mapping: EIM, Filtering: EIF, TCPMapping: EIM, Hairpin: true, Ports: PortsPreserved}},
		{RouterSpec{NAT: FullCone}, Behavior{Translated: true, Mapping: EIM, Filtering: EIF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
		{RouterSpec{NAT: FullCone, Hairpin: true}, Behavior{Translated: true, Mapping: EIM, Filtering: EIF, TCPMapping: EIM, Hairpin: true, Ports: PortsPreserved}},
		{RouterSpec{NAT: Restricted}, Behavior{Translated: true, Mapping: EIM, Filtering: ADF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
		{RouterSpec{NAT: PortRestricted}, Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
		{RouterSpec{NAT: PortRestricted, Hairpin: true}, Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: true, Ports: PortsPreserved}},
		{RouterSpec{NAT: Symmetric}, Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: false, Ports: PortsRandom}},
		{RouterSpec{NAT: Symmetric, Hairpin: true}, Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: true, Ports: PortsRandom}},
		{RouterSpec{NAT: SymmetricSequential}, Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: false, Ports: PortsSequential}},
		{RouterSpec{NAT: SymmetricSequential, Hairpin: true}, Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: true, Ports: PortsSequential}},
		{RouterSpec{NAT: CGNAT}, Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
		{RouterSpec{NAT: CGNAT, Hairpin: true}, Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
		{RouterSpec{NAT: UDPBlocked}, Behavior{Translated: true, TCPMapping: EIM, UDPBlocked: true}},
		{RouterSpec{NAT: PortRestricted, UDPTimeout: 30 * time.Second}, Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}},
	}
	var spec Spec
	names := make([]string, len(tests))
	for i, tt := range tests {
		name := "none"
		if tt.router.NAT != "" {
			name = string(tt.router.NAT)
			if tt.router.Hairpin {
				name += "+hairpin"
			}
			if tt.router.UDPTimeout != 0 {
				name += "+short"
			}
			tt.router.Name = name + "-gw"
			spec.Routers = append(spec.Routers, tt.router)
		}
		names[i] = name
		spec.Hosts = append(spec.Hosts, HostSpec{Name: name, Router: tt.router.Name})
		n := tt.router.NAT
		if n == "" {
			n = None
		}
		if got := n.Expected(tt.router.Hairpin); got != tt.want {
			t.Errorf("%s: NAT.Expected = %v, table says %v", name, got, tt.want)
		}
	}
	lab := New(t, spec)

	type result struct {
		b   Behavior
		err error
	}
	results := make([]chan result, len(tests))
	for i := range tests {
		results[i] = make(chan result, 1)
		go func() {
			b, err := lab.Probe(names[i])
			results[i] <- result{b, err}
		}()
	}
	for i, tt := range tests {
		r := <-results[i]
		if r.err != nil {
			t.Errorf("%s: %v", names[i], r.err)
			continue
		}
		t.Logf("%-26s %v", names[i], r.b)
		if r.b != tt.want {
			t.Errorf("%s: probe saw %v, want %v", names[i], r.b, tt.want)
		}
	}
}
