package wire

import "encoding/binary"

// AttrRefused is the REFUSED attribute (docs/PROTOCOL.md §20.7): one word,
// a Reason, in a SIGNAL from the target of an introduction to the querier:
// the target will not connect to the querier, and says why, instead of
// punching. It is a signalled attribute: the server copies it into the
// indication, and SIGNAL_MAC covers it, so that only the peer (or the
// server, which made the SECRET) can send it.
const AttrRefused AttrType = 0x0012

// ReasonRefused is the value of REFUSED when the querier is not on the
// target's allow list. A receiver reads any other value as a refusal too.
const ReasonRefused Reason = 0x00000010

// wordsRefused is the length of REFUSED in words.
const wordsRefused = 1

// SetRefused sets REFUSED.
func (m *Message) SetRefused(r Reason) { m.Refused = r; m.mark(AttrRefused) }

func appendRefused(b []byte, r Reason) []byte {
	b = appendAttrHeader(b, AttrRefused, wordsRefused)
	return binary.BigEndian.AppendUint32(b, uint32(r))
}

func decodeRefused(v []byte) (Reason, error) {
	if len(v) != 4*wordsRefused {
		return 0, errAttrLength
	}
	return Reason(binary.BigEndian.Uint32(v)), nil
}
