package natdisco

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

func TestClassWireRoundTrip(t *testing.T) {
	for _, c := range []Class{
		{},
		{Mapping: MappingEIM, Filtering: FilteringEIF, Ports: PortsPreserved, Hairpin: true, IPv6: true, Public: true},
		{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsSequential, Delta: 1},
		{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsSequential, Delta: -3, IPv6: true},
		{Mapping: MappingADM, Filtering: FilteringUnknown, Ports: PortsRandom},
	} {
		if got := FromWire(c.Wire()); got != c {
			t.Errorf("FromWire(%v.Wire()) = %v", c, got)
		}
	}
}

// The word layout is fixed by the golden vectors in package wire; here the
// Class side of one of them.
func TestClassWireGolden(t *testing.T) {
	c := Class{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsSequential, Delta: 1, IPv6: true}
	if w := c.Wire(); w != 0x33200102 {
		t.Fatalf("Wire = %08x, want 33200102", uint32(w))
	}
	// Delta is meaningless unless sequential and is not sent.
	c = Class{Mapping: MappingAPDM, Ports: PortsRandom, Delta: 5}
	if w := c.Wire(); w.Delta() != 0 {
		t.Fatalf("random class sent delta %d", w.Delta())
	}
}

func TestFromWireUnknownValues(t *testing.T) {
	// Mapping 7, filtering 9, ports 4, delta 5 with random... all beyond
	// this version: read as unknown, flags 0xf8 ignored.
	c := FromWire(wire.MakeNATClass(7, 9, 4, 5, 0xf8))
	if c != (Class{}) {
		t.Fatalf("FromWire of unassigned values = %+v, want zero Class", c)
	}
}

func TestLineIsStable(t *testing.T) {
	for _, tc := range []struct {
		c    Class
		want string
	}{
		{Class{}, "nat mapping=unknown filtering=unknown ports=unknown hairpin=no ipv6=no"},
		{Class{Mapping: MappingEIM, Filtering: FilteringAPDF, Ports: PortsPreserved, Hairpin: true},
			"nat mapping=eim filtering=apdf ports=preserved hairpin=yes ipv6=no"},
		{Class{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsSequential, Delta: 1, IPv6: true},
			"nat mapping=apdm filtering=apdf ports=sequential hairpin=no ipv6=yes"},
		{Class{Mapping: MappingADM, Filtering: FilteringADF, Ports: PortsSequential, Delta: 2},
			"nat mapping=adm filtering=adf ports=sequential hairpin=no ipv6=no delta=2"},
		{Class{Mapping: MappingAPDM, Filtering: FilteringEIF, Ports: PortsRandom},
			"nat mapping=apdm filtering=eif ports=random hairpin=no ipv6=no"},
	} {
		if got := tc.c.Line(); got != tc.want {
			t.Errorf("Line = %q, want %q", got, tc.want)
		}
	}
}

var (
	symRandom = Class{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsRandom}
	symSeq    = Class{Mapping: MappingAPDM, Filtering: FilteringAPDF, Ports: PortsSequential, Delta: 1}
	portRestr = Class{Mapping: MappingEIM, Filtering: FilteringAPDF, Ports: PortsPreserved}
	fullCone  = Class{Mapping: MappingEIM, Filtering: FilteringEIF, Ports: PortsPreserved}
)

func TestDiagnose(t *testing.T) {
	for _, tc := range []struct {
		name        string
		local, peer Class
		want        string // a substring that must appear
	}{
		{"both-random", symRandom, symRandom, "both peers are behind NATs that map each destination to a new random port; no direct path is possible"},
		{"random-vs-port-restricted", symRandom, portRestr, "this peer's NAT maps each destination to a new random port and the other peer's NAT only admits the exact port"},
		{"port-restricted-vs-random", portRestr, symRandom, "the other peer's NAT maps each destination to a new random port and this peer's NAT only admits"},
		{"random-vs-full-cone", symRandom, fullCone, "this peer's NAT maps each destination to a new random port and the probes did not get through"},
		{"sequential-both", symSeq, symSeq, "predicted ports did not answer"},
		{"easy-both", portRestr, fullCone, "a firewall may be blocking UDP"},
		{"unknown-both", Class{}, Class{}, "neither peer is known"},
		{"unknown-peer", portRestr, Class{}, "one peer is unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Diagnose(tc.local, tc.peer)
			if !strings.Contains(got, tc.want) {
				t.Fatalf("Diagnose = %q, want it to contain %q", got, tc.want)
			}
			if strings.Contains(got, `"`) {
				t.Fatalf("Diagnose = %q: a double quote would break msg=\"...\"", got)
			}
		})
	}
}

func TestExplainMentionsTheFix(t *testing.T) {
	s := strings.Join(Explain(symRandom), " ")
	for _, w := range []string{"new public port", "random", "To fix it", "IPv6"} {
		if !strings.Contains(s, w) {
			t.Errorf("Explain(symmetric random) = %q: missing %q", s, w)
		}
	}
	s = strings.Join(Explain(Class{}), " ")
	if !strings.Contains(s, "could not be measured") {
		t.Errorf("Explain(unknown) = %q", s)
	}
}

func TestPortPattern(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []uint16
		want  Ports
		delta int8
	}{
		{"plus-one", []uint16{20000, 20001, 20002, 20003, 20004}, PortsSequential, 1},
		{"minus-two", []uint16{30010, 30008, 30006, 30004}, PortsSequential, -2},
		{"wraps", []uint16{65534, 65535, 0, 1}, PortsSequential, 1},
		// Seen in the lab: a punch opened 238 sockets between two samples.
		{"one-jump-forgiven", []uint16{20601, 20602, 20603, 20604, 20842, 20843, 20844, 20845}, PortsSequential, 1},
		// Seen in the lab (two sequential NATs that missed): one sample
		// off the run, the counter's next port taken by someone else.
		{"outlier-inside", []uint16{21679, 21680, 21681, 21526, 21683, 21684, 21685}, PortsSequential, 1},
		{"outlier-last", []uint16{20744, 20745, 20746, 20747, 20749, 20750, 20670}, PortsSequential, 1},
		{"outlier-first", []uint16{40000, 20300, 20301, 20302, 20303, 20304}, PortsSequential, 1},
		{"outlier-descending", []uint16{30010, 30009, 30008, 1234, 30006, 30005}, PortsSequential, -1},
		// Too few samples to drop one: four ports with an outlier prove
		// nothing.
		{"outlier-too-few", []uint16{20000, 20001, 35000, 20003, 20004}, PortsRandom, 0},
		// Two outliers, or an outlier and a step back, are not a run.
		{"two-outliers", []uint16{20000, 20001, 35000, 20003, 50000, 20005, 20006}, PortsRandom, 0},
		// The counter wrapped at the end of its range (the lab's NAT
		// counts over 20000-22047): one step back is forgiven too.
		{"wraps-in-range", []uint16{22044, 22046, 22047, 20002, 20003, 20004}, PortsSequential, 1},
		{"jump-backwards", []uint16{20601, 20602, 20603, 20100, 20101, 20102}, PortsSequential, 1},
		{"back-and-forth", []uint16{20601, 20602, 20100, 20101, 20602, 20603}, PortsRandom, 0},
		{"two-jumps", []uint16{20000, 20001, 20300, 20301, 20700, 20701}, PortsRandom, 0},
		{"random", []uint16{1059, 60973, 1868, 49072, 27111, 28126}, PortsRandom, 0},
		{"same-port", []uint16{5000, 5000, 5000, 5000}, PortsRandom, 0},
		{"big-step", []uint16{1000, 1100, 1200, 1300}, PortsRandom, 0},
		{"too-few", []uint16{1000, 1001}, PortsRandom, 0},
	} {
		if p, d := portPattern(tc.ports); p != tc.want || d != tc.delta {
			t.Errorf("%s: portPattern(%v) = %v %d, want %v %d", tc.name, tc.ports, p, d, tc.want, tc.delta)
		}
	}
}

// TestPortPatternRandomStaysRandom: ports drawn at random, as a symmetric
// NAT with random allocation gives them, never read as sequential, even
// with one outlier forgiven and one big step forgiven: 200,000 draws of
// the classifier's 7 samples (and of 6, the fewest it drops one from).
func TestPortPatternRandomStaysRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200_000 {
		ports := make([]uint16, 6+i%2)
		for j := range ports {
			ports[j] = uint16(1024 + rng.IntN(65536-1024))
		}
		if p, d := portPattern(ports); p != PortsRandom {
			t.Fatalf("random ports %v read as %v delta %d", ports, p, d)
		}
	}
}
