#!/usr/bin/env bash
# Full-length trainings side by side on a machine with many idle cores, 2 threads each (8 runs fill 16 cores):
#   LIMIT=420 bash benchmarks/explore_parallel.sh runs.txt
# runs.txt: one run a line, a name, then `python -m wavenet_conv.train` flags, for example
#   qA --recipe quality
#   qH --recipe quality -l 1e-2 -b 256 --epochs 45
# LIMIT: seconds each run may take (default 420). Prints each run's last line; each run's summary.json and
# metrics.jsonl end up in $OUT/ex.tar (default OUT=out/explore).
CONFIGS=$(realpath "${1:?usage: bash benchmarks/explore_parallel.sh RUNS_FILE}") || exit 1
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-out/explore}
export PYTHONUNBUFFERED=1
lscpu | grep -E "Model name|^CPU\(s\)"
while read -r name flags; do
    timeout "${LIMIT:-420}" python3 -m wavenet_conv.train -o "/tmp/ex/$name" $flags --threads 2 --num-samples 0 \
        --device cpu > "/tmp/ex-$name.log" 2>&1 &
done < "$CONFIGS"
wait
mkdir -p "$OUT/ex"
for d in /tmp/ex/*; do
    n=$(basename "$d")
    cp "$d/metrics.jsonl" "$OUT/ex/$n.metrics.jsonl" 2>/dev/null
    cp "$d/summary.json" "$OUT/ex/$n.summary.json" 2>/dev/null
    tail -n 1 "/tmp/ex-$n.log"
done
(cd "$OUT" && tar cf ex.tar ex && rm -rf ex)
