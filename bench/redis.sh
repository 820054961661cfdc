#!/usr/bin/env bash
# redis.sh: several ewfd sharing one store, against one ewfd on bbolt, in
# one run on one machine: REGISTER/s, BIND/s, QUERY/s and introductions/s
# with 1, 2 and 3 ewfd on one Redis and on a 3-master Redis Cluster, and
# the memory a registration takes in Redis. Markdown on stdout.
#
#   bench/redis.sh
#   DURATION=10s SERVERS="1 3" bench/redis.sh
#
# Each cell is the sum over one generator per ewfd, run at the same time.
# QUERY and introductions are asked across servers when there are several:
# the generator at server i asks for clients bound at server i+1 (kept
# bound by a slow "holder" generator there), so every answer needs Redis
# (the peer's binding) and every INTRODUCE is handed to the other server.
# With one server they are answered from memory. Redis runs with AOF and
# appendfsync always: an acknowledged REGISTER is on disk, the guarantee
# bbolt gives.
#
# Needs redis-server and redis-cli. Environment: SERVERS ("1 2 3"),
# DURATION (5s), WARMUP (1s), SOCKETS (64), DEPTH (4), MEMN (100000: the
# registrations of the memory measurement), KEEP_TMP=1.

source "$(dirname "$0")/lib.sh"

SERVERS=${SERVERS:-1 2 3}
MEMN=${MEMN:-100000}
for c in redis-server redis-cli; do
	command -v $c >/dev/null || {
		echo "$c is not installed (apt-get install -y redis-server)" >&2
		exit 2
	}
done

build_tools
log "$(machine)"
log "sockets=${SOCKETS:-64} depth=${DEPTH:-4} duration=${DURATION:-5s} per generator"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_redis DIR PORT [ARGS...]
start_redis() {
	local dir=$1 port=$2
	shift 2
	mkdir -p "$dir"
	redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes \
		--appendfsync always --protected-mode no --logfile "$dir/redis.log" "$@" &
	PIDS+=($!)
	for _ in $(seq 100); do
		redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
		sleep 0.05
	done
	echo "redis-server on $port did not start" >&2
	exit 2
}

# start_ewfds N STORE: N ewfd on fresh ports; sets ADDRS and EWFD_PIDS.
start_ewfds() {
	local n=$1 store=$2 i p
	ADDRS=() EWFD_PIDS=()
	for i in $(seq "$n"); do
		p=$(free_port)
		local args=(-listen "127.0.0.1:$p" -rate 1e9 -register-per-ip 1000000000 -intro-rate 1e9
			-intro-burst 1000000 -log-level warn)
		if [[ $store == bbolt ]]; then
			mkdir -p "$TMP/data.$p"
			args+=(-data "$TMP/data.$p")
		else
			args+=(-store "$store")
		fi
		$SERVER_PIN "$TMP/ewfd" "${args[@]}" >"$TMP/ewfd.$p.log" 2>&1 &
		EWFD_PIDS+=($!)
		PIDS+=($!)
		ADDRS+=("127.0.0.1:$p")
		wait_ready "$!" "127.0.0.1:$p"
	done
}

stop_ewfds() {
	local p
	for p in "${EWFD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${EWFD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# gen MODE I [FLAGS...]: one generator at server I in the background,
# output in $TMP/gen.MODE.I; its pid in GEN_PIDS.
gen() {
	local mode=$1 i=$2
	shift 2
	# shellcheck disable=SC2086
	$BENCH_PIN "$TMP/ewf-bench" --server "${ADDRS[$i]}" --mode "$mode" --sockets "${SOCKETS:-64}" \
		--depth "${DEPTH:-4}" --duration "${DURATION:-5s}" --warmup "${WARMUP:-1s}" "$@" \
		>"$TMP/gen.$mode.$i" 2>&1 &
	GEN_PIDS+=($!)
}

# sum_rps MODE: waits for the generators and sets RPS to their summed
# requests/s; fails on any bad response. (Not in a $(...) subshell: wait
# works only on the shell's own children.)
sum_rps() {
	local mode=$1 p i total=0 line
	for p in "${GEN_PIDS[@]}"; do
		if ! wait "$p"; then
			echo "a $mode generator failed:" >&2
			cat "$TMP"/gen."$mode".* >&2
			exit 1
		fi
	done
	GEN_PIDS=()
	for i in "${!ADDRS[@]}"; do
		line=$(tail -n 1 "$TMP/gen.$mode.$i")
		total=$(awk -v a="$total" -v b="$(kv rps "$line")" 'BEGIN{printf "%.0f", a+b}')
	done
	RPS=$total
}

# measure LABEL N STORE: one row of the table.
measure() {
	local label=$1 n=$2 store=$3 i m reg bind q intro
	start_ewfds "$n" "$store"
	GEN_PIDS=()
	for i in "${!ADDRS[@]}"; do gen register "$i"; done
	sum_rps register
	reg=$RPS
	for i in "${!ADDRS[@]}"; do gen bind "$i"; done
	sum_rps bind
	bind=$RPS
	# Holders: slow generators that keep 64 clients bound at each server
	# (and receive the INTRODUCEs) while the others ask for them.
	local holders=()
	for i in "${!ADDRS[@]}"; do
		rm -f "$TMP/peers.$i"
		"$TMP/ewf-bench" --server "${ADDRS[$i]}" --mode bind --sockets 64 --depth 1 --rate 64 \
			--duration 600s --warmup 0 --peers-out "$TMP/peers.$i" >"$TMP/holder.$i" 2>&1 &
		holders+=($!)
		PIDS+=($!)
	done
	for i in "${!ADDRS[@]}"; do
		for _ in $(seq 200); do [[ -s $TMP/peers.$i ]] && break; sleep 0.05; done
	done
	sleep 0.2 # the holders' BINDs reach Redis in the background
	for i in "${!ADDRS[@]}"; do gen query "$i" --peers-in "$TMP/peers.$(((i + 1) % n))"; done
	sum_rps query
	q=$RPS
	for i in "${!ADDRS[@]}"; do gen intro "$i" --peers-in "$TMP/peers.$(((i + 1) % n))"; done
	sum_rps intro
	intro=$RPS
	for p in "${holders[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	stop_ewfds
	printf '| %s | %d | %s | %s | %s | %s |\n' "$label" "$n" "$reg" "$bind" "$q" "$intro"
	log "$label n=$n register=$reg bind=$bind query=$q intro=$intro"
}

echo "| store | ewfd | REGISTER/s | BIND/s | QUERY/s | introductions/s |"
echo "|---|---:|---:|---:|---:|---:|"
measure "bbolt (one ewfd, no sharing)" 1 bbolt

RP=$(free_port)
start_redis "$TMP/redis" "$RP"
for n in $SERVERS; do
	redis-cli -p "$RP" flushall >/dev/null
	measure "Redis, one node" "$n" "redis://127.0.0.1:$RP/0"
done

CL=()
for i in 1 2 3; do
	while :; do
		p=$(free_port)
		((p + 10000 < 65536)) && break
	done
	start_redis "$TMP/cluster.$i" "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
	CL+=("127.0.0.1:$p")
done
redis-cli --cluster create "${CL[@]}" --cluster-replicas 0 --cluster-yes >"$TMP/cluster-create.log" 2>&1
for a in "${CL[@]}"; do
	for _ in $(seq 200); do
		redis-cli -p "${a#*:}" cluster info | grep -q cluster_state:ok && break
		sleep 0.05
	done
done
CURL="redis+cluster://$(
	IFS=,
	echo "${CL[*]}"
)"
for n in $SERVERS; do
	for a in "${CL[@]}"; do redis-cli -p "${a#*:}" flushall >/dev/null; done
	measure "Redis Cluster, 3 masters" "$n" "$CURL"
done

# Memory per registration: MEMN REGISTERs into an empty single Redis.
redis-cli -p "$RP" flushall >/dev/null
start_ewfds 1 "redis://127.0.0.1:$RP/0"
m0=$(redis-cli -p "$RP" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
k0=$(redis-cli -p "$RP" dbsize)
GEN_PIDS=()
"$TMP/ewf-bench" --server "${ADDRS[0]}" --mode register --sockets 16 --depth 4 --duration 60s --warmup 0 \
	--rate "$((MEMN / 10))" >"$TMP/gen.mem" 2>&1 &
memgen=$!
PIDS+=($memgen)
while (($(redis-cli -p "$RP" dbsize) - k0 < MEMN)); do sleep 0.2; done
kill "$memgen" 2>/dev/null || true
wait "$memgen" 2>/dev/null || true
sleep 0.5
m1=$(redis-cli -p "$RP" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
k1=$(redis-cli -p "$RP" dbsize)
stop_ewfds
echo
awk -v m0="$m0" -v m1="$m1" -v k0="$k0" -v k1="$k1" 'BEGIN{
	printf "Memory per registration in Redis: %.0f bytes (used_memory %d -> %d for %d keys)\n", (m1-m0)/(k1-k0), m0, m1, k1-k0}'
echo
echo "$(machine)"
