#!/usr/bin/env bash
# ewfd-ab.sh: variants of ewfd (flags, environment or other binaries) side
# by side, in alternating rounds, with coturn as the reference; for A/B
# measurements of server changes, which only mean something within one run.
#
#   VARIANTS="r2=-udp-readers 2;r1=-udp-readers 1" bench/ewfd-ab.sh
#   VARIANTS="new=;old=/tmp/ewfd-old:" ROUNDS=5 DURATION=5s bench/ewfd-ab.sh
#
# VARIANTS is a ';'-separated list of NAME=FLAGS or NAME=PROGRAM:FLAGS;
# without PROGRAM the ewfd built from this tree runs. PROGRAM may be a
# script that sets the environment and then execs ewfd (exec, so that the
# CPU measured is ewfd's). Each line shows requests/s, latency, the CPU of
# the generator, the server and everything else, answers per server
# CPU-second and the server's context switches per second; the medians
# follow.
#
# Environment: VARIANTS, ROUNDS (3), DURATION (10s), MODE (stun),
# NO_COTURN=1, and SOCKETS, DEPTH, WARMUP, BENCH_FLAGS as for the other
# scripts.

source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
: "${VARIANTS:?set VARIANTS, e.g. VARIANTS=\"a=-udp-readers 1;b=-udp-readers 2\"}"
build_tools
log "$(machine)"

NAMES=() SPIDS=() ADDRS=()
port=${EWFD_PORT:-3478}
if [[ -z "${NO_COTURN:-}" ]]; then
	start_coturn "$port"
	NAMES+=(coturn) SPIDS+=("$COTURN_PID") ADDRS+=("127.0.0.1:$port")
	port=$((port + 1))
fi
IFS=';' read -ra VS <<<"$VARIANTS"
for v in "${VS[@]}"; do
	name=${v%%=*} rest=${v#*=} prog=$TMP/ewfd
	if [[ $rest == *:* ]]; then
		prog=${rest%%:*} rest=${rest#*:}
	fi
	mkdir -p "$TMP/data.$name"
	# shellcheck disable=SC2086
	"$prog" -listen "127.0.0.1:$port" -data "$TMP/data.$name" $EWFD_BENCH_DEFAULT $rest >"$TMP/$name.log" 2>&1 &
	PIDS+=($!) NAMES+=("$name") SPIDS+=($!) ADDRS+=("127.0.0.1:$port")
	port=$((port + 1))
done
for i in "${!NAMES[@]}"; do
	wait_ready "${SPIDS[$i]}" "${ADDRS[$i]}"
done

# ctxsw PID: voluntary and involuntary context switches of all its threads.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/{s += $2} END{print s + 0}'; }

n=${#NAMES[@]}
for r in $(seq "$ROUNDS"); do
	log "round $r"
	for k in $(seq 0 $((n - 1))); do
		i=$(((r - 1 + k) % n))
		pid=${SPIDS[$i]}
		c0=$(ctxsw "$pid")
		line=$(bench "$pid" "${ADDRS[$i]}" "${MODE:-stun}")
		c1=$(ctxsw "$pid")
		w=$(kv wall_s "$line")
		eff=$(awk -v ok="$(kv ok "$line")" -v w="$w" -v c="$(kv server_cpu_pct "$line")" \
			'BEGIN{if (c > 0) printf "%.0f", ok/(w*c/100); else print 0}')
		cs=$(awk -v d=$((c1 - c0)) -v w="$w" 'BEGIN{printf "%.0f", d/w}')
		printf '%-8s rps=%-7s p50_us=%-6s p90_us=%-6s p99_us=%-6s lost=%-4s gen_cpu=%s%% server_cpu=%s%% other_cpu=%s%% per_server_cpu_s=%s ctxsw_per_s=%s\n' \
			"${NAMES[$i]}" "$(kv rps "$line")" "$(kv p50_us "$line")" "$(kv p90_us "$line")" "$(kv p99_us "$line")" \
			"$(kv lost "$line")" "$(kv cpu_pct "$line")" "$(kv server_cpu_pct "$line")" "$(kv other_cpu_pct "$line")" "$eff" "$cs" >&2
		echo "${NAMES[$i]} $(kv rps "$line") $eff" >>"$TMP/rps"
	done
done
for name in "${NAMES[@]}"; do
	printf '%-8s median rps=%-7s per_server_cpu_s=%s\n' "$name" \
		"$(awk -v n="$name" '$1==n{print $2}' "$TMP/rps" | median)" \
		"$(awk -v n="$name" '$1==n{print $3}' "$TMP/rps" | median)"
done
