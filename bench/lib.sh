# Shared helpers of the bench/ scripts; sourced, not run.
#
# Every process a script starts is recorded in PIDS and killed by the EXIT
# trap, and only those: a coturn installed as a system service is never
# touched.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ewf-bench.XXXXXX")
PIDS=()
CLK_TCK=$(getconf CLK_TCK)

cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [[ -n "${KEEP_TMP:-}" ]]; then
		echo "logs kept in $TMP" >&2
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "# $*" >&2; }

# build_tools builds ewf-bench (and ewfd unless NO_EWFD is set) into $TMP.
# PIN=1 gives the servers CPU 0 and the generator CPU 1 (taskset), so that
# a server that answers faster cannot take CPU from the generator that
# measures it; by default nothing is pinned, as in production.
SERVER_PIN="" BENCH_PIN=""
if [[ -n "${PIN:-}" ]]; then
	SERVER_PIN="taskset -c 0" BENCH_PIN="taskset -c 1"
fi

build_tools() {
	(cd "$REPO" && go build -o "$TMP/ewf-bench" ./cmd/ewf-bench)
	if [[ -z "${NO_EWFD:-}" ]]; then
		(cd "$REPO" && go build -o "$TMP/ewfd" ./cmd/ewfd)
	fi
}

# start_ewfd ADDR: ewfd on ADDR with a fresh data directory. Per-source
# limits exist to stop abuse from one address (50 requests/s, 20 REGISTERs
# an hour by default); the generator is one address, 127.0.0.1, sending as
# much as it can, so EWFD_BENCH_FLAGS lifts them, and EWFD_FLAGS adds
# anything else. coturn has no such limit to lift.
EWFD_BENCH_DEFAULT="-rate 1e9 -register-per-ip 1000000000 -log-level warn"
start_ewfd() {
	mkdir -p "$TMP/data"
	# shellcheck disable=SC2086
	$SERVER_PIN "$TMP/ewfd" -listen "$1" -data "$TMP/data" ${EWFD_BENCH_FLAGS-$EWFD_BENCH_DEFAULT} ${EWFD_FLAGS:-} >"$TMP/ewfd.log" 2>&1 &
	EWFD_PID=$!
	PIDS+=("$EWFD_PID")
}

# start_coturn PORT [FLAGS...]: coturn as a STUN-only server on
# 127.0.0.1:PORT, our own process with no configuration file; see
# bench/README.md for why these options.
start_coturn() {
	local port=$1
	shift
	command -v turnserver >/dev/null || {
		echo "coturn is not installed (apt-get install -y coturn)" >&2
		exit 2
	}
	# shellcheck disable=SC2086
	$SERVER_PIN turnserver -n --stun-only \
		--listening-ip 127.0.0.1 --listening-port "$port" \
		--no-tls --no-dtls --no-cli --no-rfc5780 --response-origin-only-with-rfc5780 \
		--no-software-attribute \
		--userdb "$TMP/turndb.$port" --pidfile "$TMP/turnserver.$port.pid" \
		--log-file "$TMP/turnserver.$port.log" --simple-log --no-stdout-log \
		"$@" ${COTURN_FLAGS:-} >/dev/null 2>&1 &
	COTURN_PID=$!
	PIDS+=("$COTURN_PID")
}

# wait_ready PID ADDR: until a STUN Binding to ADDR is answered.
wait_ready() {
	local i out
	for i in $(seq 100); do
		kill -0 "$1" 2>/dev/null || {
			echo "server at $2 exited; logs in $TMP" >&2
			KEEP_TMP=1
			exit 2
		}
		out=$("$TMP/ewf-bench" --server "$2" --sockets 1 --depth 1 --duration 100ms --warmup 0 \
			--timeout 100ms 2>/dev/null) || true
		if [[ $out == *" ok="[1-9]* ]]; then
			return 0
		fi
		sleep 0.1
	done
	echo "server at $2 does not answer STUN" >&2
	exit 2
}

# cpu_ticks PID: user+system CPU of a process (all threads) in clock ticks.
cpu_ticks() {
	# Fields after the ")" that ends the command name: utime is the 12th,
	# stime the 13th.
	sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# kv KEY LINE: the value of KEY in an ewf-bench key=value line.
kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

# busy_ticks: CPU ticks the whole machine has spent busy (all CPUs).
busy_ticks() {
	awk '$1=="cpu"{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# bench PID ADDR MODE: one ewf-bench run; prints its key=value line with
# server_cpu_pct (the server's CPU over the run, 100 = one core) and
# other_cpu_pct (CPU that neither the server nor the generator used: other
# load on the machine, which the numbers suffer from) appended. Fails the
# script if the server sent a bad response.
bench() {
	local pid=$1 addr=$2 mode=$3 t0 t1 b0 b1 out rc=0 wall
	b0=$(busy_ticks)
	t0=$(cpu_ticks "$pid")
	out=$($BENCH_PIN "$TMP/ewf-bench" --server "$addr" --mode "$mode" --sockets "${SOCKETS:-64}" \
		--depth "${DEPTH:-4}" --duration "${DURATION:-10s}" --warmup "${WARMUP:-1s}" \
		${BENCH_FLAGS:-}) || rc=$?
	t1=$(cpu_ticks "$pid")
	b1=$(busy_ticks)
	if [[ $rc -ne 0 ]]; then
		echo "$out" >&2
		echo "ewf-bench against $addr failed (exit $rc)" >&2
		exit 1
	fi
	out=$(tail -n 1 <<<"$out")
	wall=$(kv wall_s "$out")
	awk -v t=$((t1 - t0)) -v b=$((b1 - b0)) -v hz="$CLK_TCK" -v w="$wall" -v g="$(kv cpu_pct "$out")" -v line="$out" \
		'BEGIN{s = 100*t/hz/w; o = 100*b/hz/w - s - g; if (o < 0) o = 0
			printf "%s server_cpu_pct=%.0f other_cpu_pct=%.0f\n", line, s, o}' 
}

# median: the median of the numbers on stdin, one per line.
median() {
	sort -n | awk '{v[NR]=$1} END{if (NR%2) print v[(NR+1)/2]; else printf "%.0f\n", (v[NR/2]+v[NR/2+1])/2}'
}

# machine: one line about where the numbers come from.
machine() {
	echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), Linux $(uname -r), $(go version | cut -d' ' -f3), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
