package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewf-project/ewf/wire"
)

// reqKind is the "kind" label of ewfd_requests_total.
type reqKind uint8

const (
	kindSTUN reqKind = iota
	kindRegister
	kindBind
	kindQuery
	kindIntroduction // QUERY with SOURCE_ID and KEY
	kindOther        // X requests of a method the server does not serve
	kindSignal       // SIGNAL: candidates relayed to a peer
	kindRelay        // RELAY: TURN credentials
	numKinds
)

var kindNames = [numKinds]string{"stun", "register", "bind", "query", "introduction", "other", "signal", "relay"}

func kindOf(m wire.Method) reqKind {
	switch m {
	case wire.MethodRegister:
		return kindRegister
	case wire.MethodBind:
		return kindBind
	case wire.MethodQuery:
		return kindQuery
	case wire.MethodSignal:
		return kindSignal
	case wire.MethodRelay:
		return kindRelay
	}
	return kindOther
}

// outcome is the "outcome" label of ewfd_requests_total: ok, an error
// reason, or one of the outcomes that send nothing new.
type outcome uint8

const (
	outOK         outcome = iota
	outRetransmit         // REGISTER retransmission answered from the cache
	outInFlight           // REGISTER retransmission while its commit runs: dropped
	outBusy               // store queue full or closing: dropped, the client retries
	outReason0            // outReason0 + r for error reason r (0..15)
	// outReplayed is the replay refusal (docs/PROTOCOL.md §18.3): on the
	// wire it is reason 0x0C like a stale TIMESTAMP, but not in the label.
	outReplayed = outReason0 + 16
	numOutcomes = outReplayed + 1
)

// The integrity refusals of docs/PROTOCOL.md §18.3.
const (
	outIntegrityRequired = outReason0 + outcome(wire.ReasonIntegrityRequired)
	outStale             = outReason0 + outcome(wire.ReasonStale)
)

var outcomeNames = [numOutcomes]string{
	"ok", "retransmit", "in_flight", "busy",
	"unknown_method", "invalid_attributes", "not_registered", "key_mismatch",
	"id_conflict", "address_mismatch", "not_bound", "registration_limit",
	"rate_limited", "server_error", "try_later",
	outReason0 + outcome(wire.ReasonPeerUnreachable): "peer_unreachable",
	outReason0 + outcome(wire.ReasonNoRelay):         "no_relay",
	outIntegrityRequired:                             "integrity_required",
	outStale:                                         "stale",
	outReplayed:                                      "replayed",
}

func r(x wire.Reason) outcome { return reasonOutcome(x) }

// kindOutcomes lists the outcomes each kind of request can have.
var kindOutcomes = [numKinds][]outcome{
	kindSTUN: {outOK},
	kindRegister: {outOK, outRetransmit, outInFlight, outBusy, r(wire.ReasonInvalidAttributes),
		r(wire.ReasonIDConflict), r(wire.ReasonRegistrationLimit), r(wire.ReasonServerError), r(wire.ReasonTryLater),
		r(wire.ReasonRateLimited)},
	kindBind: {outOK, r(wire.ReasonInvalidAttributes), r(wire.ReasonNotRegistered),
		r(wire.ReasonKeyMismatch), r(wire.ReasonAddressMismatch), r(wire.ReasonTryLater),
		outIntegrityRequired, outStale, outReplayed, r(wire.ReasonRateLimited)},
	kindQuery: {outOK, r(wire.ReasonInvalidAttributes), r(wire.ReasonNotRegistered), r(wire.ReasonNotBound),
		r(wire.ReasonTryLater), r(wire.ReasonRateLimited)},
	kindIntroduction: {outOK, r(wire.ReasonNotRegistered), r(wire.ReasonKeyMismatch),
		r(wire.ReasonNotBound), r(wire.ReasonRateLimited), r(wire.ReasonTryLater),
		outIntegrityRequired, outStale, outReplayed},
	kindOther: {r(wire.ReasonUnknownMethod), r(wire.ReasonInvalidAttributes), r(wire.ReasonRateLimited)},
	kindSignal: {outOK, r(wire.ReasonInvalidAttributes), r(wire.ReasonNotRegistered), r(wire.ReasonKeyMismatch),
		r(wire.ReasonNotBound), r(wire.ReasonRateLimited), r(wire.ReasonPeerUnreachable), r(wire.ReasonTryLater),
		outIntegrityRequired, outStale, outReplayed},
	kindRelay: {outOK, r(wire.ReasonInvalidAttributes), r(wire.ReasonNotRegistered), r(wire.ReasonKeyMismatch),
		r(wire.ReasonRateLimited), r(wire.ReasonNoRelay),
		outIntegrityRequired, outStale, outReplayed},
}

func reasonOutcome(r wire.Reason) outcome {
	if r < wire.Reason(numOutcomes-outReason0) && outcomeNames[outReason0+outcome(r)] != "" {
		return outReason0 + outcome(r)
	}
	return outReason0 + outcome(wire.ReasonServerError)
}

// dropKind is the "reason" label of ewfd_dropped_total: packets that got no
// answer at all.
type dropKind uint8

const (
	dropMalformed     dropKind = iota // not STUN/X, bad header, bad STUN body
	dropIgnored                       // indications, responses, STUN other than Binding request
	dropRateLimited                   // over the per-source rate
	dropAmplification                 // answer would exceed twice the request (UDP)
	numDrops
)

var dropNames = [numDrops]string{"malformed", "ignored", "rate_limited", "amplification"}

// metrics are the Server's collectors, resolved to plain counters up front
// so that the packet path only does atomic adds.
type metrics struct {
	requests [numKinds][numOutcomes]prometheus.Counter
	drops    [numDrops]prometheus.Counter
	commit   prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry, s *Server) (*metrics, error) {
	m := &metrics{}
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_requests_total",
		Help: "Requests answered or deliberately not answered, by kind and outcome.",
	}, []string{"kind", "outcome"})
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_dropped_total",
		Help: "Packets dropped without an answer, by reason (rate_limited: over the per-source rate).",
	}, []string{"reason"})
	m.commit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ewfd_store_commit_seconds",
		Help:    "Time from a REGISTER being queued to its registration being durable (or failing).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	bindingsGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ewfd_bindings",
		Help:        "Live bindings (swept every few seconds after expiry).",
		ConstLabels: prometheus.Labels{"transport": "udp"},
	}, func() float64 { return float64(s.bind.live[wire.TransportUDP].Load()) })
	bindingsTCP := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ewfd_bindings",
		Help:        "Live bindings (swept every few seconds after expiry).",
		ConstLabels: prometheus.Labels{"transport": "tcp"},
	}, func() float64 { return float64(s.bind.live[wire.TransportTCP].Load()) })
	regs := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ewfd_registrations",
		Help: "Registrations held by the store, including those being committed.",
	}, func() float64 { return float64(s.st.Len()) })
	evictions := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ewfd_replay_evictions_total",
		Help: "Authenticated requests forgotten by the replay cache before their TIMESTAMP left the window (cache too small for the load).",
	}, func() float64 { return float64(s.replay.evicted.Load()) })
	for _, c := range []prometheus.Collector{reqs, drops, m.commit, bindingsGauge, bindingsTCP, regs, evictions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Only the combinations that can happen are exported; the others count
	// into a counter no registry sees, so a mistake cannot panic.
	sink := prometheus.NewCounter(prometheus.CounterOpts{Name: "ewfd_unexported"})
	for k := range numKinds {
		for o := range numOutcomes {
			m.requests[k][o] = sink
		}
		for _, o := range kindOutcomes[k] {
			m.requests[k][o] = reqs.WithLabelValues(kindNames[k], outcomeNames[o])
		}
	}
	for d := range numDrops {
		m.drops[d] = drops.WithLabelValues(dropNames[d])
	}
	return m, nil
}

func (m *metrics) count(k reqKind, o outcome) { m.requests[k][o].Inc() }
func (m *metrics) drop(d dropKind)            { m.drops[d].Inc() }
