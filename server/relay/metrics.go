package relay

import "github.com/prometheus/client_golang/prometheus"

// refusal is the "reason" label of ewfd_relay_refused_total.
type refusal uint8

const (
	refusePeerAddress      refusal = iota // permission or channel to a denied peer address
	refuseSelfPort                        // datagram to the relay host outside the relayed ports
	refuseQuotaTotal                      // allocation over MaxAllocs
	refuseQuotaID                         // allocation over MaxAllocsPerID
	refuseQuotaIP                         // allocation over MaxAllocsPerIP
	refuseBandwidth                       // datagram dropped over a bandwidth quota
	refuseLifetime                        // allocation ended at MaxLifetime
	refuseAuthMalformed                   // username not expiry:ID
	refuseAuthExpired                     // Allocate with expired credentials
	refuseAuthUnregistered                // the username's ID has no live registration
	refuseTCPRelay                        // RFC 6062 TCP relaying asked for
	refusePort                            // a requested relayed port outside the range
	refuseNoPort                          // no free port in the range
	refuseNotAdmitted                     // socket asked for outside an admitted Allocate (EVEN-PORT)
	refuseFamily                          // allocation of an address family without a relay IP
	numRefusals
)

var refusalNames = [numRefusals]string{
	"peer_address", "self_port", "quota_total", "quota_id", "quota_ip", "bandwidth", "lifetime",
	"auth_malformed", "auth_expired", "auth_unregistered", "tcp_relay", "port", "no_port", "not_admitted", "family",
}

// metrics are the relay's collectors, on the registry of the ewfd that
// runs it, resolved up front so that the packet path only adds.
type metrics struct {
	allocs   prometheus.Counter
	bytesIn  prometheus.Counter // from peers, to be relayed to clients
	bytesOut prometheus.Counter // from clients, relayed to peers
	refused  [numRefusals]prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, r *Relay) (*metrics, error) {
	m := &metrics{
		allocs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewfd_relay_allocations_total", Help: "TURN allocations made.",
		}),
	}
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ewfd_relay_allocations", Help: "Live TURN allocations.",
	}, func() float64 { return float64(r.Allocations()) })
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_relay_bytes_total",
		Help: "Payload bytes relayed (from_peer: received on relayed sockets, to_peer: sent from them).",
	}, []string{"direction"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_relay_refused_total",
		Help: "Relay requests refused and datagrams dropped, by reason.",
	}, []string{"reason"})
	for _, c := range []prometheus.Collector{m.allocs, live, bytes, refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.bytesIn = bytes.WithLabelValues("from_peer")
	m.bytesOut = bytes.WithLabelValues("to_peer")
	for i := range m.refused {
		m.refused[i] = refused.WithLabelValues(refusalNames[i])
	}
	return m, nil
}

func (m *metrics) refuse(r refusal) { m.refused[r].Inc() }
