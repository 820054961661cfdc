#!/usr/bin/env bash
# integrity.sh: the end-to-end cost of integrity (docs/PROTOCOL.md §18):
# BIND in the design note's KEY form against BIND in the integrity form
# (TIMESTAMP + MAC keyed by the KEY, the server's MAC on every answer,
# checked by the generator), against one ewfd, in alternating rounds.
# Prints requests/s and answers per server CPU-second for each, and the
# medians' ratios (the issue's target: integrity ≥ 0.8× the KEY form).
#
#   PIN=1 ROUNDS=5 DURATION=5s bench/integrity.sh
#
# Environment: ROUNDS (3), DURATION (10s), MODE (bind; intro works too),
# PIN, SOCKETS, DEPTH, WARMUP, EWFD_FLAGS as for the other scripts.

source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
MODE=${MODE:-bind}
build_tools
log "$(machine)"
addr=127.0.0.1:${EWFD_PORT:-3478}
start_ewfd "$addr"
wait_ready "$EWFD_PID" "$addr"

for r in $(seq "$ROUNDS"); do
	log "round $r"
	forms=(off on)
	if ((r % 2 == 0)); then forms=(on off); fi
	for f in "${forms[@]}"; do
		line=$(BENCH_FLAGS="${BENCH_FLAGS:-} --integrity $f" bench "$EWFD_PID" "$addr" "$MODE")
		w=$(kv wall_s "$line")
		eff=$(awk -v ok="$(kv ok "$line")" -v w="$w" -v c="$(kv server_cpu_pct "$line")" \
			'BEGIN{if (c > 0) printf "%.0f", ok/(w*c/100); else print 0}')
		printf 'integrity=%-3s rps=%-7s p50_us=%-6s p99_us=%-6s gen_cpu=%s%% server_cpu=%s%% other_cpu=%s%% per_server_cpu_s=%s\n' \
			"$f" "$(kv rps "$line")" "$(kv p50_us "$line")" "$(kv p99_us "$line")" \
			"$(kv cpu_pct "$line")" "$(kv server_cpu_pct "$line")" "$(kv other_cpu_pct "$line")" "$eff" >&2
		echo "$f $(kv rps "$line") $eff" >>"$TMP/rps"
	done
done
for f in off on; do
	printf 'integrity=%-3s median rps=%-7s per_server_cpu_s=%s\n' "$f" \
		"$(awk -v n="$f" '$1==n{print $2}' "$TMP/rps" | median)" \
		"$(awk -v n="$f" '$1==n{print $3}' "$TMP/rps" | median)" | tee -a "$TMP/med"
done
awk '{split($3, r, "="); split($4, e, "="); rps[$1] = r[2]; eff[$1] = e[2]}
	END{printf "ratio integrity/KEY: rps %.2f, answers per server CPU-second %.2f\n", rps["integrity=on"]/rps["integrity=off"], eff["integrity=on"]/eff["integrity=off"]}' "$TMP/med"
