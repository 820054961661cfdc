#!/usr/bin/env bash
# throughput.sh: bytes through ewf on loopback, side by side with the
# libraries it is built on, in one run (bench/README.md, "Throughput").
#
#  1. bench/throughput (one process): quic-go alone on a plain UDP socket,
#     ewf over QUIC, crypto/tls on plain TCP, ewf over TLS/TCP; ROUNDS
#     alternating rounds, medians and the ewf/library ratios.
#  2. The real binaries: ewfd, `ewf listen >/dev/null` and
#     `ewf connect <FILE`, SIZE bytes, per transport: what a user sees,
#     stdin/stdout piping and two processes included.
#
# Environment: SIZE (bytes, default 536870912), ROUNDS (default 5),
# PROFILE=DIR (write one CPU profile of the in-process run there),
# INPROC=0 skips part 1, BIN=0 part 2.
source "$(dirname "$0")/lib.sh"

SIZE=${SIZE:-536870912}
ROUNDS=${ROUNDS:-5}

(cd "$REPO" && go build -o "$TMP/throughput" ./bench/throughput && go build -o "$TMP/" ./cmd/ewf ./cmd/ewfd)

log "in process: $ROUNDS rounds of $SIZE bytes per mode"
prof=()
if [[ -n "${PROFILE:-}" ]]; then
	mkdir -p "$PROFILE"
	prof=(-cpuprofile "$PROFILE/throughput.prof")
fi
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
field() { # field MODE KEY
	grep "mode=$1 " "$TMP/inproc.txt" | tr ' ' '\n' | sed -n "s/^$2=//p" | median
}

if [[ "${INPROC:-1}" != 0 ]]; then
"$TMP/throughput" -size "$SIZE" -rounds "$ROUNDS" "${prof[@]}" | tee "$TMP/inproc.txt"

echo
printf '%-10s %10s %10s %12s %14s\n' mode gbit_s seconds connect_ms cpu_s_per_gib
for m in quic-go ewf-quic tls ewf-tcp; do
	printf '%-10s %10s %10s %12s %14s\n' "$m" "$(field $m gbit_s)" "$(field $m seconds)" "$(field $m connect_ms)" "$(field $m cpu_s_per_gib)"
done
awk -v a="$(field ewf-quic gbit_s)" -v b="$(field quic-go gbit_s)" 'BEGIN {printf "ratio ewf-quic/quic-go = %.2f (target >= 0.9)\n", a/b}'
awk -v a="$(field ewf-tcp gbit_s)" -v b="$(field tls gbit_s)" 'BEGIN {printf "ratio ewf-tcp/tls     = %.2f (target >= 0.9)\n", a/b}'
# The same ratio per round (each round runs the modes back to back, so
# the two sides of a ratio share the machine's state), and its spread.
for pair in "ewf-quic quic-go" "ewf-tcp tls"; do
	set -- $pair
	paste <(grep "mode=$1 " "$TMP/inproc.txt" | tr ' ' '\n' | sed -n 's/^gbit_s=//p') \
		<(grep "mode=$2 " "$TMP/inproc.txt" | tr ' ' '\n' | sed -n 's/^gbit_s=//p') |
		awk '{printf "%.2f\n", $1/$2}' | sort -g | tr '\n' ' ' |
		awk -v n="$1/$2" '{m = (NF%2) ? $((NF+1)/2) : ($(NF/2)+$(NF/2+1))/2; printf "per round %-16s median %.2f, min %s, max %s: %s\n", n, m, $1, $NF, $0}'
done
awk -v a="$(field ewf-tcp cpu_s_per_gib)" -v b="$(field tls cpu_s_per_gib)" 'BEGIN {printf "CPU per GiB ewf-tcp/tls = %.2f (1 = as cheap as crypto/tls)\n", a/b}'
fi

[[ "${BIN:-1}" == 0 ]] && exit 0

echo
log "binaries: ewf listen | ewf connect, $SIZE bytes, $ROUNDS rounds per transport"
head -c "$SIZE" /dev/urandom >"$TMP/data"
"$TMP/ewfd" --listen 127.0.0.1:0 --data "$TMP/ewfd-data" --log-level info >"$TMP/ewfd.log" 2>&1 &
PIDS+=($!)
# ewfd logs its addresses; wait for the first one.
srv=""
for _ in $(seq 50); do
	srv=$(grep -o "addrs=\[127.0.0.1:[0-9]*" "$TMP/ewfd.log" | head -1 | cut -d[ -f2 || true)
	[[ -n "$srv" ]] && break
	sleep 0.1
done
[[ -n "$srv" ]] || { cat "$TMP/ewfd.log" >&2; echo "ewfd did not start" >&2; exit 1; }

for tr in udp tcp; do
	for r in $(seq "$ROUNDS"); do
		rm -f "$TMP/l.err"
		"$TMP/ewf" listen --server "$srv" --identity "$TMP/l-$tr.json" >/dev/null 2>"$TMP/l.err" </dev/null &
		lp=$!
		PIDS+=($lp)
		id=""
		for _ in $(seq 100); do
			id=$(sed -n 's/^ready id=\([0-9a-f]*\).*/\1/p' "$TMP/l.err" 2>/dev/null || true)
			[[ -n "$id" ]] && break
			sleep 0.05
		done
		[[ -n "$id" ]] || { cat "$TMP/l.err" >&2; exit 1; }
		t0=$(date +%s.%N)
		"$TMP/ewf" connect --server "$srv" --identity "$TMP/c-$tr.json" --transport "$tr" "$id" <"$TMP/data" 2>"$TMP/c.err" >/dev/null
		wait "$lp"
		t1=$(date +%s.%N)
		awk -v t0="$t0" -v t1="$t1" -v s="$SIZE" -v tr="$tr" \
			'BEGIN {printf "binaries transport=%s bytes=%d seconds=%.3f gbit_s=%.2f\n", tr, s, t1-t0, s*8/(t1-t0)/1e9}'
	done
done | tee "$TMP/bin.txt"
for tr in udp tcp; do
	echo "binaries $tr median gbit_s=$(grep "transport=$tr " "$TMP/bin.txt" | tr ' ' '\n' | sed -n 's/^gbit_s=//p' | median)"
done
