#!/usr/bin/env bash
# stun-vs-coturn.sh: STUN Binding throughput of ewfd against coturn's, on
# loopback, with the same load generator (ewf-bench) and the same load.
#
#   bench/stun-vs-coturn.sh            # 3 rounds × 10 s per server
#   ROUNDS=5 DURATION=20s bench/stun-vs-coturn.sh
#
# The servers run at once, each as this script's own process (the coturn
# system service, if any, is left alone), and the generator takes turns
# between them, each round starting with the next server, so that drift in
# the machine's other load hits all alike. coturn runs twice: with its
# default thread count and with one relay thread (COTURN_THREADS), because
# with the generator on the same 2 cores one thread is often faster; the
# headline ratio is against the faster of the two. Nothing is
# pinned: each server may use every core, as it would in production, and
# shares them with the generator. The result is the median requests/s of
# each and the ratio ewfd/coturn; the issue's target is a ratio of at
# least 1.5.
#
# Environment: ROUNDS (3), DURATION (10s), WARMUP (1s), SOCKETS (64),
# DEPTH (4), EWFD_PORT (3478), COTURN_PORT (3479, then 3480, …),
# COTURN_THREADS ("default 1": --relay-threads values), COTURN_FLAGS and
# EWFD_FLAGS (extra server options), BENCH_FLAGS (extra ewf-bench flags),
# NO_EWFD=1 (coturn only), KEEP_TMP=1 (keep logs), PIN=1 (servers on CPU 0,
# the generator on CPU 1; see lib.sh).
#
# coturn's configuration (bench/README.md explains it): no configuration
# file (-n), --stun-only, one listening IP, no TLS/DTLS/CLI listeners, no
# RFC 5780 (with a single address it is off anyway) and so no
# RESPONSE-ORIGIN, no SOFTWARE attribute; threads as above (coturn 4.6's
# default is one UDP relay thread per CPU, each with its own SO_REUSEPORT
# socket, as ewfd has one reader per CPU). Logs go to a file without
# per-packet lines.

source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
COTURN_THREADS=${COTURN_THREADS:-default 1}
port=${COTURN_PORT:-3479}

build_tools
log "$(machine)"
log "coturn $(turnserver --version 2>/dev/null | head -n 1), ewf-bench sockets=${SOCKETS:-64}" \
	"depth=${DEPTH:-4} duration=${DURATION:-10s} rounds=$ROUNDS ${BENCH_FLAGS:-}"

# The servers under test, in parallel arrays.
NAMES=() SPIDS=() ADDRS=()
for m in $COTURN_THREADS; do
	if [[ $m == default ]]; then
		start_coturn "$port"
		NAMES+=(coturn)
	else
		start_coturn "$port" --relay-threads "$m"
		NAMES+=("coturn-m$m")
	fi
	SPIDS+=("$COTURN_PID") ADDRS+=("127.0.0.1:$port")
	port=$((port + 1))
done
if [[ -z "${NO_EWFD:-}" ]]; then
	start_ewfd "127.0.0.1:${EWFD_PORT:-3478}"
	NAMES+=(ewfd) SPIDS+=("$EWFD_PID") ADDRS+=("127.0.0.1:${EWFD_PORT:-3478}")
fi
for i in "${!NAMES[@]}"; do
	wait_ready "${SPIDS[$i]}" "${ADDRS[$i]}"
done

run() { # NAME PID ADDR
	local line eff
	line=$(bench "$2" "$3" stun)
	# Answers per second of server CPU: what the server does with the CPU
	# it got, which other load on the machine disturbs much less than
	# requests/s.
	eff=$(awk -v ok="$(kv ok "$line")" -v w="$(kv wall_s "$line")" -v c="$(kv server_cpu_pct "$line")" \
		'BEGIN{if (c > 0) printf "%.0f", ok/(w*c/100); else print 0}')
	printf '%-10s rps=%-7s p50_us=%-6s p99_us=%-6s lost=%-5s gen_cpu=%s%% server_cpu=%s%% other_cpu=%s%% per_server_cpu_s=%s\n' \
		"$1" "$(kv rps "$line")" "$(kv p50_us "$line")" "$(kv p99_us "$line")" "$(kv lost "$line")" \
		"$(kv cpu_pct "$line")" "$(kv server_cpu_pct "$line")" "$(kv other_cpu_pct "$line")" "$eff" >&2
	echo "$1 $(kv rps "$line") $eff $(kv other_cpu_pct "$line")" >>"$TMP/rps"
}

# Round r starts with server r-1 (mod n), so that each server is measured
# early and late in a round equally often: drift in the machine's other
# load then hits all alike.
n=${#NAMES[@]}
for r in $(seq "$ROUNDS"); do
	log "round $r"
	for k in $(seq 0 $((n - 1))); do
		i=$(((r - 1 + k) % n))
		run "${NAMES[$i]}" "${SPIDS[$i]}" "${ADDRS[$i]}"
	done
done

best=0 best_name=
for name in "${NAMES[@]}"; do
	rps=$(awk -v n="$name" '$1==n{print $2}' "$TMP/rps" | median)
	eff=$(awk -v n="$name" '$1==n{print $3}' "$TMP/rps" | median)
	printf '%-10s median rps=%-7s per_server_cpu_s=%s\n' "$name" "$rps" "$eff"
	echo "$name $rps $eff" >>"$TMP/medians"
	if [[ $name == coturn* ]] && ((rps > best)); then
		best=$rps best_name=$name
	fi
done
if [[ -z "${NO_EWFD:-}" ]]; then
	awk '$1=="ewfd"{e=$2; ee=$3} $1!="ewfd"{c[$1]=$2; ce[$1]=$3}
		END{for (k in c) printf "ratio ewfd/%s=%.2f (per server CPU second %.2f)\n", k, e/c[k], ee/ce[k]}' \
		"$TMP/medians" | sort
	awk -v e="$(awk '$1=="ewfd"{print $2}' "$TMP/medians")" -v c="$best" -v n="$best_name" \
		'BEGIN{printf "ratio ewfd/best coturn (%s)=%.2f (target >= 1.5)\n", n, e/c}'
fi
other=$(awk '{print $4}' "$TMP/rps" | median)
if ((other > 10)); then
	log "warning: other processes used $other % CPU (median over the runs): the numbers are noisy"
fi
