#!/usr/bin/env bash
# timm's own benchmark.py, unmodified, on vmbench's VMamba-T and timm's Swin-T: an outside measure of speed.
#
# Run from the repository root, on the GPU machine, with timm's benchmark.py (fetched from timm's source, the
# version matching the installed timm; never committed) in .timm-bench/:
#   OUT=/some/dir bash benchmarks/timm_check.sh
# For each model, eager then --torchcompile (inductor): `--bench both` (inference, then a train step: forward,
# backward, SGD), AMP bf16, batch 128, default size (224²). benchmark.py's CSV goes to $OUT/timm_<model>_<mode>.csv
# and its log (with its JSON result) to the matching .log; $OUT/timm_check.csv gathers every row.
# vmbench's models are registered in timm by `import vmbench.models` before benchmark.py runs.
#
# Knobs (environment): MODELS, BATCH (128), WARM (10), ITERS (40; benchmark.py needs >= 5), DEVICE (cuda), MODES ("eager compile"),
# IMG (empty: each model's default), EXTRA (more benchmark.py arguments), BUDGET_S (0: none; else each run is
# stopped when this many seconds have passed since the start, so the summary is still written inside a call's
# time limit). A CPU smoke check of this script:
#   OUT=/tmp/tc DEVICE=cpu BATCH=2 WARM=1 ITERS=5 MODES=eager IMG=64 \
#     MODELS="vmamba_t swin_tiny_patch4_window7_224" bash benchmarks/timm_check.sh
set -euo pipefail

BENCH=.timm-bench/benchmark.py
[ -f "$BENCH" ] || { echo "timm_check: $BENCH not found (timm's benchmark.py; see the README)" >&2; exit 2; }
: "${OUT:?set OUT to the folder for the results}"
MODELS=${MODELS:-"vmamba_t swin_tiny_patch4_window7_224"}
BATCH=${BATCH:-128}
WARM=${WARM:-10}
ITERS=${ITERS:-40}
DEVICE=${DEVICE:-cuda}
MODES=${MODES:-"eager compile"}
IMG=${IMG:-}
EXTRA=${EXTRA:-}
BUDGET_S=${BUDGET_S:-0}
T0=$(date +%s)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no gpu')" | tee "$OUT/timm_check_env.txt"

status=0
for mode in $MODES; do
  for model in $MODELS; do
    args=(--model "$model" --bench both --amp --amp-dtype bfloat16 -b "$BATCH" --device "$DEVICE"
          --num-warm-iter "$WARM" --num-bench-iter "$ITERS" --no-retry
          --results-file "$OUT/timm_${model}_${mode}.csv" --results-format csv)
    if [ -n "$IMG" ]; then
      args+=(--img-size "$IMG")
      # Swin sizes its windows and relative-position tables at build time.
      case "$model" in swin*) args+=(--model-kwargs "img_size=$IMG") ;; esac
    fi
    [ "$mode" = compile ] && args+=(--torchcompile)
    # shellcheck disable=SC2206
    [ -n "$EXTRA" ] && args+=($EXTRA)
    echo "== $model $mode: benchmark.py ${args[*]}"
    start=$(date +%s)
    limit=()
    if [ "$BUDGET_S" -gt 0 ]; then
      left=$(( BUDGET_S - (start - T0) ))
      if [ "$left" -lt 30 ]; then echo "   skipped: the ${BUDGET_S} s budget is spent"; status=1; continue; fi
      limit=(timeout "$left")
    fi
    if ! ${limit[@]+"${limit[@]}"} "$PY" -c "import runpy, sys, vmbench.models; sys.argv = ['benchmark.py'] + sys.argv[1:]
runpy.run_path('$BENCH', run_name='__main__')" "${args[@]}" >"$OUT/timm_${model}_${mode}.log" 2>&1; then
      echo "   failed (log: $OUT/timm_${model}_${mode}.log)"; tail -5 "$OUT/timm_${model}_${mode}.log"; status=1
    fi
    echo "   $(( $(date +%s) - start )) s"
    grep -h "samples_per_sec\|\"error\"" "$OUT/timm_${model}_${mode}.log" | sed 's/^/   /' || true
  done
done

# One table: every CSV row, with the mode added (benchmark.py's columns are the same for every run of --bench both).
"$PY" - "$OUT" <<'EOF'
import csv, glob, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "timm_*_*.csv"))):
    mode = os.path.basename(path)[:-4].rsplit("_", 1)[1]
    with open(path) as f:
        rows += [dict(mode=mode, **r) for r in csv.DictReader(f)]
if rows:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "timm_check.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cols = ["mode", "model", "infer_samples_per_sec", "infer_step_time", "train_samples_per_sec", "train_step_time",
            "param_count"]
    print("  ".join(cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")) for c in cols))
EOF
exit $status
