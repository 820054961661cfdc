package stunx_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire/stunx"
)

var (
	origin4 = netip.MustParseAddrPort("203.0.113.2:3479")
	other4  = netip.MustParseAddrPort("203.0.113.1:3478")
	origin6 = netip.MustParseAddrPort("[2001:db8::2]:3479")
	other6  = netip.MustParseAddrPort("[2001:db8::1]:3478")
)

// Written by hand from RFC 5780 §7.3 and §7.4 (plain MAPPED-ADDRESS layout
// of RFC 5389 §15.1): RESPONSE-ORIGIN 0x802b 203.0.113.2:3479 (port
// 0x0d97, address cb007102), OTHER-ADDRESS 0x802c 203.0.113.1:3478.
const resp5780 = "01010024" + "2112a442" + tx + xma4 +
	"802b0008" + "00010d97" + "cb007102" +
	"802c0008" + "00010d96" + "cb007101"

func TestAppendBindingSuccess5780Golden(t *testing.T) {
	req := decode(t, reqBare)
	prefix := []byte("keep")
	out := stunx.AppendBindingSuccess5780(append([]byte(nil), prefix...), req, src4, origin4, other4)
	if !bytes.HasPrefix(out, prefix) {
		t.Fatal("prefix lost")
	}
	if got, want := out[len(prefix):], unhex(t, resp5780); !bytes.Equal(got, want) {
		t.Fatalf("got\n%x\nwant\n%x", got, want)
	}
	if n := stunx.BindingSuccess5780Len(req, src4, origin4, other4); n != len(out)-len(prefix) {
		t.Fatalf("BindingSuccess5780Len = %d, built %d", n, len(out)-len(prefix))
	}
	// Invalid origin and other leave exactly the plain answer.
	plain := stunx.AppendBindingSuccess5780(nil, req, src4, netip.AddrPort{}, netip.AddrPort{})
	if !bytes.Equal(plain, unhex(t, resp4)) {
		t.Fatalf("without RFC 5780 attributes: %x", plain)
	}
}

// TestAppendBindingSuccess5780MatchesPion is the differential test: pion
// builds the same response from its own attribute types, byte for byte.
func TestAppendBindingSuccess5780MatchesPion(t *testing.T) {
	for _, c := range []struct {
		name               string
		req                string
		src, origin, other netip.AddrPort
	}{
		{"ipv4", reqBare, src4, origin4, other4},
		{"ipv4 fingerprint", reqFP, src4, origin4, other4},
		{"ipv6 fingerprint", reqFP, src6, origin6, other6},
		{"ipv6 origin only", reqBare, src6, origin6, netip.AddrPort{}},
		{"mixed families", reqFP, src6, origin4, other4},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := decode(t, c.req)
			got := stunx.AppendBindingSuccess5780(nil, req, c.src, c.origin, c.other)
			setters := []stun.Setter{
				stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: ipOf(c.src), Port: int(c.src.Port())},
			}
			if c.origin.IsValid() {
				setters = append(setters, &stun.ResponseOrigin{IP: ipOf(c.origin), Port: int(c.origin.Port())})
			}
			if c.other.IsValid() {
				setters = append(setters, &stun.OtherAddress{IP: ipOf(c.other), Port: int(c.other.Port())})
			}
			if req.Contains(stun.AttrFingerprint) {
				setters = append(setters, stun.Fingerprint)
			}
			want, err := stun.Build(setters...)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Raw) {
				t.Fatalf("ours\n%x\npion\n%x", got, want.Raw)
			}
		})
	}
}

func ipOf(ap netip.AddrPort) net.IP {
	a := ap.Addr().Unmap()
	if a.Is4() {
		v := a.As4()
		return net.IP(v[:])
	}
	v := a.As16()
	return net.IP(v[:])
}

func TestChangeRequest(t *testing.T) {
	for _, c := range []struct {
		name                     string
		value                    []byte
		ip, port, present, valid bool
	}{
		{"none", nil, false, false, false, true},
		{"ip and port", []byte{0, 0, 0, 6}, true, true, true, true},
		{"port", []byte{0, 0, 0, 2}, false, true, true, true},
		{"ip", []byte{0, 0, 0, 4}, true, false, true, true},
		{"neither", []byte{0, 0, 0, 0}, false, false, true, true},
		{"short", []byte{0, 6}, false, false, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
			if c.value != nil {
				m.Add(stun.AttrChangeRequest, c.value)
			}
			m.WriteHeader()
			var d stun.Message
			if err := stunx.Decode(m.Raw, &d); err != nil {
				t.Fatal(err)
			}
			ip, port, present, valid := stunx.ChangeRequest(&d)
			if ip != c.ip || port != c.port || present != c.present || valid != c.valid {
				t.Fatalf("ChangeRequest = %v %v %v %v, want %v %v %v %v", ip, port, present, valid, c.ip, c.port, c.present, c.valid)
			}
		})
	}
}

func TestRFC5780NoAllocs(t *testing.T) {
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, 6})
	if err := stun.Fingerprint.AddTo(m); err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), m.Raw...)
	var d stun.Message
	if err := stunx.Decode(raw, &d); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 0, 1500)
	n := testing.AllocsPerRun(200, func() {
		_ = stunx.Decode(raw, &d)
		_, _, _, _ = stunx.ChangeRequest(&d)
		out = stunx.AppendBindingSuccess5780(out[:0], &d, src6, origin6, other6)
	})
	if n != 0 {
		t.Fatalf("%v allocs per run, want 0", n)
	}
}
