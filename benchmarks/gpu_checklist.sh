#!/usr/bin/env bash
# The checks for a machine with an NVIDIA GPU, one step or several:
#   bash benchmarks/gpu_checklist.sh tests train compare sample
# tests: the whole suite, CUDA tests included; train: the default recipe on CUDA to the lecture's val loss;
# compare, sample: the two benchmarks on CUDA. Each step logs to $OUT/<step>.log (default OUT=out/gpu) and packs
# the files it writes, checkpoints left out, into $OUT/<step>.tar. On a machine without network access, wheels
# the tests need beyond torch (optuna) can wait in .whl/: they are installed into /tmp/site first.
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
for step in "$@"; do
    dir="$OUT/$step"; mkdir -p "$dir"; start=$(date +%s)
    case $step in
        tests)   workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")  # 200 s on one process
                 python3 -m pytest -q -rs -p no:cacheprovider $workers ;;
        train)   python3 -m wavenet_conv.train --device cuda --target-loss 1.9937 -o "$dir" ;;
        compare) timeout 400 python3 benchmarks/compare.py --device cuda --out-dir "$dir" --json "$dir/compare_cuda.json" ;;
        sample)  python3 benchmarks/sample.py --device cuda --out-dir "$dir" --json "$dir/sample_cuda.json" ;;
        *)       echo "unknown step $step"; false ;;
    esac > "$OUT/$step.log" 2>&1
    echo "== $step: exit $? in $(( $(date +%s) - start )) s"; tail -n 15 "$OUT/$step.log"
    (cd "$dir" && ls -A | grep -v '\.pt$' | tar cf "../$step.tar" -T -) 2>/dev/null; rm -rf "$dir"
done
