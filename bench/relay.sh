#!/usr/bin/env bash
# relay.sh: the relay's figures for the README, in one run:
#
#   1. relayed QUIC throughput (1 MiB each way per transfer, SHA-256
#      checked) and the round trip a relay adds (64-byte datagrams to an
#      echo peer): a direct loopback path, ewfd's embedded relay, and coturn
#      given ewfd's credentials, side by side (BenchmarkRelay* in
#      relayclient/bench_test.go);
#   2. ewfd's STUN rate with the relay off and on (-relay on its own
#      port), one ewf-bench each, turns taken ROUNDS times.
#
#   bench/relay.sh                 # 3 rounds of each
#   ROUNDS=5 BENCHTIME=50x DURATION=5s bench/relay.sh
#
# Needs coturn (turnserver) for the coturn column. Environment: ROUNDS
# (3), BENCHTIME (30x), DURATION (10s), SOCKETS, DEPTH, KEEP_TMP=1.

source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
log "$(machine)"

# 1. Throughput and latency, every relay in the same benchmark run.
(cd "$REPO" && QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true go test -run '^$' -bench 'Relay' \
	-benchtime "${BENCHTIME:-30x}" -count "$ROUNDS" ./relayclient/) | tee "$TMP/relaybench" >&2
echo "| path | QUIC MB/s (both directions, median of $ROUNDS) | datagram RTT p50 | p99 |"
echo "|---|---:|---:|---:|"
for p in direct ewfd coturn; do
	tp=$(awk -v p="BenchmarkRelayThroughput/$p-" 'index($1, p) == 1 {print $(NF-1)}' "$TMP/relaybench" | median)
	p50=$(awk -v p="BenchmarkRelayRTT/$p-" 'index($1, p) == 1 {for (i = 1; i <= NF; i++) if ($i == "p50-µs") print $(i-1)}' "$TMP/relaybench" | median)
	p99=$(awk -v p="BenchmarkRelayRTT/$p-" 'index($1, p) == 1 {for (i = 1; i <= NF; i++) if ($i == "p99-µs") print $(i-1)}' "$TMP/relaybench" | median)
	[[ -n $tp ]] && echo "| $p | $tp | $p50 µs | $p99 µs |"
done

# 2. STUN with the relay off and on.
build_tools
ADDR_OFF=127.0.0.1:${EWFD_PORT:-3478}
ADDR_ON=127.0.0.1:$(( ${EWFD_PORT:-3478} + 10 ))
EWFD_FLAGS="" start_ewfd "$ADDR_OFF"
OFF_PID=$EWFD_PID
mkdir -p "$TMP/data-on" # the later -data wins
EWFD_FLAGS="-data $TMP/data-on -relay -relay-ip 127.0.0.1 -relay-listen 127.0.0.1:0" start_ewfd "$ADDR_ON"
ON_PID=$EWFD_PID
wait_ready "$OFF_PID" "$ADDR_OFF"
wait_ready "$ON_PID" "$ADDR_ON"
for r in $(seq "$ROUNDS"); do
	for v in off on; do
		if [[ $v == off ]]; then line=$(bench "$OFF_PID" "$ADDR_OFF" stun); else line=$(bench "$ON_PID" "$ADDR_ON" stun); fi
		log "round $r relay=$v: $line"
		echo "$(kv rps "$line")" >>"$TMP/stun-$v"
	done
done
off=$(median <"$TMP/stun-off")
on=$(median <"$TMP/stun-on")
echo
echo "| ewfd | STUN requests/s (median of $ROUNDS) |"
echo "|---|---:|"
echo "| relay off | $off |"
echo "| relay on | $on |"
awk -v a="$off" -v b="$on" 'BEGIN{printf "\nrelay on / off = %.3f\n", b/a}'
