#!/usr/bin/env bash
# server.sh: ewfd's throughput and latency per request kind on loopback,
# as a Markdown table for the README's performance section.
#
#   bench/server.sh                      # stun, bind, query; 1 round × 10 s
#   ROUNDS=3 MODES="stun query" bench/server.sh
#
# One ewfd, one ewf-bench at a time; with ROUNDS > 1 the modes take turns
# within each round and the table shows each mode's median round (by
# requests/s). "register" is left out by default: every request makes a
# durable registration (a disk write), so it measures the disk, and the
# server caps REGISTERs per source address.
#
# Environment: MODES ("stun bind query"), ROUNDS (1), DURATION (10s),
# WARMUP (1s), SOCKETS (64), DEPTH (4), EWFD_PORT (3478), EWFD_FLAGS,
# BENCH_FLAGS, KEEP_TMP=1.

source "$(dirname "$0")/lib.sh"

MODES=${MODES:-stun bind query}
ROUNDS=${ROUNDS:-1}
ADDR=127.0.0.1:${EWFD_PORT:-3478}

build_tools
log "$(machine)"
log "sockets=${SOCKETS:-64} depth=${DEPTH:-4} duration=${DURATION:-10s} rounds=$ROUNDS"
start_ewfd "$ADDR"
wait_ready "$EWFD_PID" "$ADDR"

for r in $(seq "$ROUNDS"); do
	for m in $MODES; do
		line=$(bench "$EWFD_PID" "$ADDR" "$m")
		log "round $r: $line"
		echo "$line" >>"$TMP/lines"
	done
done

echo "| request | requests/s | p50 | p99 | lost | ewf-bench CPU | ewfd CPU | other CPU |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for m in $MODES; do
	# The median round by requests/s, whole, so its columns belong together.
	line=$(grep " mode=$m " "$TMP/lines" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^rps=/) print substr($i, 5), $0}' |
		sort -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}' | cut -d' ' -f2-)
	printf '| %s | %s | %s µs | %s µs | %s | %s %% | %s %% | %s %% |\n' "$m" "$(kv rps "$line")" \
		"$(kv p50_us "$line")" "$(kv p99_us "$line")" "$(kv lost "$line")" \
		"$(kv cpu_pct "$line")" "$(kv server_cpu_pct "$line")" "$(kv other_cpu_pct "$line")"
	echo "$m $(kv rps "$line")" >>"$TMP/rps"
done
if grep -q '^stun ' "$TMP/rps" && grep -q '^query ' "$TMP/rps"; then
	awk '$1=="stun"{s=$2} $1=="query"{q=$2} END{printf "\nquery/stun = %.2f (target: within 20 %%, >= 0.80)\n", q/s}' "$TMP/rps"
fi
