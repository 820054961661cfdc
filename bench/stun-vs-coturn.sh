#!/usr/bin/env bash
# stun-vs-coturn.sh: STUN Binding throughput of ewfd against coturn's, on
# loopback, with the same load generator (ewf-bench) and the same load.
#
#   bench/stun-vs-coturn.sh            # 3 rounds × 10 s per server
#   ROUNDS=5 DURATION=20s bench/stun-vs-coturn.sh
#
# Both servers run at once, each as this script's own process (the coturn
# system service, if any, is left alone), and the generator alternates
# between them: coturn, ewfd in odd rounds, ewfd, coturn in even ones, so
# that drift in the machine's other load hits both alike. Nothing is
# pinned: each server may use every core, as it would in production, and
# shares them with the generator. The result is the median requests/s of
# each and the ratio ewfd/coturn; the issue's target is a ratio of at
# least 1.5.
#
# Environment: ROUNDS (3), DURATION (10s), WARMUP (1s), SOCKETS (64),
# DEPTH (4), EWFD_PORT (3478), COTURN_PORT (3479), COTURN_FLAGS and
# EWFD_FLAGS (extra server options), BENCH_FLAGS (extra ewf-bench flags),
# NO_EWFD=1 (coturn only), KEEP_TMP=1 (keep logs).
#
# coturn's configuration (bench/README.md explains it): no configuration
# file (-n), --stun-only, one listening IP, no TLS/DTLS/CLI listeners, no
# RFC 5780 (with a single address it is off anyway), no SOFTWARE attribute,
# and the default thread count, one UDP relay thread per CPU (coturn 4.6's
# "net engine 3" gives each its own SO_REUSEPORT socket), which is what
# ewfd does too. Logs go to a file without per-packet lines.

source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
EWFD_ADDR=127.0.0.1:${EWFD_PORT:-3478}
COTURN_ADDR=127.0.0.1:${COTURN_PORT:-3479}

build_tools
log "$(machine)"
log "coturn $(turnserver --version 2>/dev/null | head -n 1)," \
	"sockets=${SOCKETS:-64} depth=${DEPTH:-4} duration=${DURATION:-10s} rounds=$ROUNDS"

start_coturn "${COTURN_PORT:-3479}"
wait_ready "$COTURN_PID" "$COTURN_ADDR"
if [[ -z "${NO_EWFD:-}" ]]; then
	start_ewfd "$EWFD_ADDR"
	wait_ready "$EWFD_PID" "$EWFD_ADDR"
fi

run() { # NAME PID ADDR
	local line eff
	line=$(bench "$2" "$3" stun)
	# Answers per second of server CPU: what the server does with the CPU
	# it got, which other load on the machine disturbs much less than
	# requests/s.
	eff=$(awk -v ok="$(kv ok "$line")" -v w="$(kv wall_s "$line")" -v c="$(kv server_cpu_pct "$line")" \
		'BEGIN{if (c > 0) printf "%.0f", ok/(w*c/100); else print 0}')
	printf '%-7s rps=%-7s p50_us=%-6s p99_us=%-6s lost=%-5s gen_cpu=%s%% server_cpu=%s%% per_server_cpu_s=%s\n' "$1" \
		"$(kv rps "$line")" "$(kv p50_us "$line")" "$(kv p99_us "$line")" "$(kv lost "$line")" \
		"$(kv cpu_pct "$line")" "$(kv server_cpu_pct "$line")" "$eff" >&2
	echo "$1 $(kv rps "$line") $eff" >>"$TMP/rps"
	echo "$line" >>"$TMP/lines"
}

for r in $(seq "$ROUNDS"); do
	log "round $r"
	if [[ -n "${NO_EWFD:-}" ]]; then
		run coturn "$COTURN_PID" "$COTURN_ADDR"
	elif ((r % 2)); then
		run coturn "$COTURN_PID" "$COTURN_ADDR"
		run ewfd "$EWFD_PID" "$EWFD_ADDR"
	else
		run ewfd "$EWFD_PID" "$EWFD_ADDR"
		run coturn "$COTURN_PID" "$COTURN_ADDR"
	fi
done

coturn=$(awk '$1=="coturn"{print $2}' "$TMP/rps" | median)
coturn_eff=$(awk '$1=="coturn"{print $3}' "$TMP/rps" | median)
echo "coturn median rps=$coturn per_server_cpu_s=$coturn_eff"
if [[ -z "${NO_EWFD:-}" ]]; then
	ewfd=$(awk '$1=="ewfd"{print $2}' "$TMP/rps" | median)
	ewfd_eff=$(awk '$1=="ewfd"{print $3}' "$TMP/rps" | median)
	echo "ewfd   median rps=$ewfd per_server_cpu_s=$ewfd_eff"
	awk -v e="$ewfd" -v c="$coturn" -v ee="$ewfd_eff" -v ce="$coturn_eff" \
		'BEGIN{printf "ratio ewfd/coturn=%.2f (target >= 1.5); per server CPU second %.2f\n", e/c, ee/ce}'
fi
if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v n="$(nproc)" 'BEGIN{exit !(l > n)}'; then
	log "warning: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs: other processes competed for the CPU"
fi
