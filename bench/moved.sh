#!/usr/bin/env bash
# moved.sh: a relayed connection that moved to a direct path (migrate.go,
# docs/PROTOCOL.md §25) against one that was direct from the start, on
# loopback, in alternating rounds: each round runs BenchmarkMovedThroughput's
# "direct" then its "moved" case (1 MiB writes, N MiB one way), so the two
# sides of a ratio share the machine's state. Prints every round, the
# medians and the per-round ratios.
#
# Environment: ROUNDS (default 5), N (MiB per case, default 256),
# PROFILE=DIR (CPU profiles of the last round's two cases there).
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
N=${N:-256}

(cd "$REPO" && go test -c -o "$TMP/ewf.test" .)
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

log "$ROUNDS rounds of $N MiB, direct then moved"
for r in $(seq "$ROUNDS"); do
	for m in direct moved; do
		prof=()
		if [[ -n "${PROFILE:-}" && "$r" == "$ROUNDS" ]]; then
			mkdir -p "$PROFILE"
			prof=(-test.cpuprofile "$PROFILE/$m.prof")
		fi
		(cd "$REPO" && "$TMP/ewf.test" -test.run '^$' -test.bench "BenchmarkMovedThroughput/$m\$" \
			-test.benchtime "${N}x" "${prof[@]}") | grep '^Benchmark' | tee -a "$TMP/rounds.txt"
	done
done
mbs() { grep "/$1-" "$TMP/rounds.txt" | awk '{for (i = 1; i < NF; i++) if ($(i+1) == "MB/s") print $i}'; }
echo
printf 'median MB/s: direct %s, moved %s\n' "$(mbs direct | median)" "$(mbs moved | median)"
paste <(mbs moved) <(mbs direct) | awk '{printf "%.2f\n", $1/$2}' | sort -g | tr '\n' ' ' |
	awk '{m = (NF%2) ? $((NF+1)/2) : ($(NF/2)+$(NF/2+1))/2; printf "moved/direct per round: median %.2f, min %s, max %s: %s (target >= 0.8)\n", m, $1, $NF, $0}'
