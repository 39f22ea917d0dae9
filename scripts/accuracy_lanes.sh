#!/usr/bin/env bash
# The CPU accuracy table (benchmarks/results/accuracy.json) measured again, one seed of every row at a time, in two
# one-thread lanes side by side (2 cores: the fastest way through ~19 rows; two multi-threaded processes would slow
# each other badly). The lanes run from a clean worktree of HEAD, so editing this tree meanwhile does not make the
# rows "dirty"; their rows are merged here when both are done.
#
#   bash scripts/accuracy_lanes.sh 0      # seed 0 of every row, plus the rows without seeds (probe, no prompt):
#                                         # replaces those rows (2026-12-06, 2-core Xeon: about 100 minutes)
#   bash scripts/accuracy_lanes.sh 1      # seed 1 of every prompt row, added to the rows (--add-seeds: only
#                                         # joins rows of the same commit, so nothing measured may change between)
#   SMOKE=1 bash scripts/accuracy_lanes.sh 0   # tiny settings into a temporary folder: checks the script itself
#
# Lanes' logs: $LOGS (default runs/accuracy_lanes/seed$SEED). What is stale: `python benchmarks/report.py --stale`.
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:?usage: $0 SEED}"
# balanced by the rows' seconds on a 2-core Xeon (each ~600-870 s a seed; the probe ~140 s, no-prompt rows ~50 s)
lane_a=(recipe_live recipe_fast_pad pad_frequency recipe_fast blm_plus_fast acavp_fast_pad pad_iterative)
lane_b=(acavp_live recipe_robust pad_fast shrink_pad_fast fully_map_fast blm_fast pad_first_k shrink_pad_iterative)
no_seeds=(linear_probe no_prompt_first_k no_prompt_frequency no_prompt_multi_frequency)
merge=()
if [ "$seed" = 0 ]; then lane_a=("${lane_a[0]}" "${no_seeds[@]}" "${lane_a[@]:1}"); else merge=(--add-seeds); fi
logs="${LOGS:-$PWD/runs/accuracy_lanes/seed$seed}"
mkdir -p "$logs"
work=$(mktemp -d)
git worktree add -q --detach "$work/tree" HEAD
trap 'git worktree remove --force "$work/tree"; rm -rf "$work"' EXIT
args=(--threads 1 --seeds "$seed,")
out="benchmarks/results"
if [ "${SMOKE:-0}" = 1 ]; then
  args=(--smoke --seeds "$seed,"); out="$work/smoke"; mkdir -p "$out"
  lane_a=(no_prompt_first_k recipe_live); lane_b=(pad_frequency); merge=()
  python benchmarks/accuracy.py --smoke --rows linear_probe --out "$out" > "$logs/base.log" 2>&1
fi
lane() {  # NAME ROWS...
  local name=$1; shift
  (cd "$work/tree" && python benchmarks/accuracy.py "${args[@]}" --rows "$(IFS=,; echo "$*")" --out "$work/$name") \
    > "$logs/$name.log" 2>&1
}
echo "seed $seed: lane a (${lane_a[*]}), lane b (${lane_b[*]}); logs in $logs"
lane a "${lane_a[@]}" & pa=$!
lane b "${lane_b[@]}" & pb=$!
rc=0; wait $pa || rc=$?; wait $pb || rc=$?
[ "$rc" = 0 ] || { echo "a lane failed (exit $rc): see $logs; the rows it finished are in $work (kept)" >&2; trap - EXIT; exit "$rc"; }
python benchmarks/accuracy.py --merge-from "$work/a/accuracy.json" "$work/b/accuracy.json" "${merge[@]}" --out "$out" \
  > "$logs/merge.log"
if [ "${SMOKE:-0}" = 1 ]; then  # the merged rows, before the temporary folder goes
  python -c "import json, sys; print([(r['method'], r['seeds']) for r in json.load(open(sys.argv[1]))['rows']])" \
    "$out/accuracy.json"
else
  echo "merged into $out/accuracy.json; now: python benchmarks/report.py && python benchmarks/report.py --check"
fi
