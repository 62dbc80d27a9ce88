#!/usr/bin/env bash
# Full-length trainings side by side, 2 threads each: 8 at once fill the 16 cores of a lent device machine, whose
# CPUs are otherwise idle while a session waits. Each run's summary and metrics come back in $OUT/ex.tar:
#   (device tool) LIMIT=420 bash benchmarks/explore_parallel.sh
# CONFIGS: one line per run, a name then `wavenet_conv.train` flags (default: the file below). LIMIT: seconds.
cd "$(dirname "$0")/.." || exit 1
CONFIGS=${CONFIGS:-benchmarks/results/explore_full_length/configs.txt}
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
