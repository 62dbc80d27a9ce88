#!/usr/bin/env bash
# The checks for a machine with an NVIDIA GPU, one step or several:
#   bash benchmarks/gpu_checklist.sh tests train time profile compare sample
# tests: the whole suite, CUDA tests included (torch's sync debug mode among them); train: the default recipe on
# CUDA to the lecture's val loss; time: seconds to it, eager, compiled and bf16, two runs each; profile: a
# training step under torch.profiler (the GPU's busy share, the host's waits); compare (eager and compiled
# rows), sample: the two benchmarks on CUDA. Each step logs to $OUT/<step>.log (default OUT=out/gpu) and packs
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
        time)    python3 benchmarks/time_to_loss.py --device cuda --runs 2 --variant= --variant=--compile \
                     --variant="--precision bf16" --json "$dir/time_to_loss_cuda.json" ;;
        profile) python3 benchmarks/profile_step.py --device cuda --json "$dir/profile_step_cuda.json" ;;
        compare) timeout 400 python3 benchmarks/compare.py --device cuda --compile --out-dir "$dir" \
                     --json "$dir/compare_cuda.json" ;;
        sample)  python3 benchmarks/sample.py --device cuda --out-dir "$dir" --json "$dir/sample_cuda.json" ;;
        *)       echo "unknown step $step"; false ;;
    esac > "$OUT/$step.log" 2>&1
    echo "== $step: exit $? in $(( $(date +%s) - start )) s"; tail -n 15 "$OUT/$step.log"
    (cd "$dir" && ls -A | grep -v '\.pt$' | tar cf "../$step.tar" -T -) 2>/dev/null; rm -rf "$dir"
done
