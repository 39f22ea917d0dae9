#!/usr/bin/env bash
# The CPU accuracy table (benchmarks/results/accuracy.json) measured again, one seed of every row at a time, in two
# one-thread lanes side by side (2 cores: the fastest way through ~19 rows; two multi-threaded processes would slow
# each other badly). The lanes run from a clean worktree of HEAD, so editing this tree meanwhile does not make the
# rows "dirty"; their rows are merged here when both are done.
#
#   bash scripts/accuracy_lanes.sh 0      # seed 0 of every row, plus the rows without seeds (probe, no prompt):
#                                         # replaces those rows (2026-12-06, 2-core Xeon: about 100 minutes)
#   bash scripts/accuracy_lanes.sh 1      # seed 1 of every prompt row that lacks it, added to the rows
#                                         # (--add-seeds only joins rows of one commit: these lanes run from the
#                                         # commit the rows name, and stop if the rows name several)
#   ROWS=recipe_fast_pad,recipe_fast bash scripts/accuracy_lanes.sh 2   # only these rows (SEED > 0)
#   SMOKE=1 bash scripts/accuracy_lanes.sh 0   # tiny settings into a temporary folder: checks the script itself
#
# Lanes' logs: $LOGS (default runs/accuracy_lanes/seed$SEED). What is stale: `python benchmarks/report.py --stale`.
set -euo pipefail
{  # the whole script is read before it runs: an edit of this file while lanes run cannot change what runs
cd "$(dirname "$0")/.."
seed="${1:?usage: $0 SEED}"
# seed 0's lanes, balanced by the rows' seconds on a 2-core Xeon (each ~600-870 s a seed; the probe ~140 s,
# no-prompt rows ~50 s); a later seed's lanes are planned below from the rows' own seconds
lane_a=(recipe_live recipe_fast_pad pad_frequency recipe_fast blm_plus_fast acavp_fast_pad pad_iterative)
lane_b=(acavp_live recipe_robust pad_fast shrink_pad_fast fully_map_fast blm_fast pad_first_k shrink_pad_iterative)
no_seeds=(linear_probe no_prompt_first_k no_prompt_frequency no_prompt_multi_frequency)
merge=(); ref=HEAD
if [ "$seed" = 0 ]; then
  [ -z "${ROWS:-}" ] || { echo "ROWS is for SEED > 0: seed 0 replaces every row (a subset: accuracy.py --rows)" >&2; exit 2; }
  lane_a=("${lane_a[0]}" "${no_seeds[@]}" "${lane_a[@]:1}")
elif [ "${SMOKE:-0}" != 1 ]; then
  merge=(--add-seeds)
  # the rows' own commit (one for all, clean), the rows that lack this seed, and two lanes balanced by their seconds
  plan=$(ROWS="${ROWS:-}" python - "$seed" "${lane_a[@]}" "${lane_b[@]}" <<'PY'
import json, os, sys
seed, names = int(sys.argv[1]), sys.argv[2:]
rows = {r["method"]: r for r in json.load(open("benchmarks/results/accuracy.json"))["rows"]}
if only := [n for n in os.environ["ROWS"].split(",") if n]:
    if unknown := sorted(set(only) - set(names)):
        sys.exit(f"ROWS names rows these lanes do not run: {unknown} (they run {names})")
    names = [n for n in names if n in only]
missing = [n for n in names if n not in rows]
if missing:
    sys.exit(f"rows not in accuracy.json (run seed 0 first): {missing}")
commits = {(r["provenance"]["git_commit"], bool(r["provenance"].get("git_dirty"))) for r in rows.values()}
if len(commits) != 1 or next(iter(commits))[1]:
    sys.exit(f"the rows were measured at several commits or on a dirty tree ({sorted(commits)}): run seed 0 first")
todo = [n for n in names if seed not in rows[n]["seeds"]]
cost = {n: rows[n]["seconds"] / len(rows[n]["seeds"]) for n in todo}
lanes = [[], []]
for n in sorted(todo, key=cost.get, reverse=True):  # longest first, into the lane with less to do
    min(lanes, key=lambda lane: sum(cost[m] for m in lane)).append(n)
print(next(iter(commits))[0]); print(" ".join(lanes[0])); print(" ".join(lanes[1]))
PY
  )
  { read -r ref; read -r -a lane_a; read -r -a lane_b; } <<< "$plan"
  [ "${#lane_a[@]}" -gt 0 ] || { echo "every row has seed $seed already"; exit 0; }
fi
logs="${LOGS:-$PWD/runs/accuracy_lanes/seed$seed}"
mkdir -p "$logs"
work=$(mktemp -d)
git worktree add -q --detach "$work/tree" "$ref"
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
echo "seed $seed at $(git rev-parse --short "$ref"): lane a (${lane_a[*]}), lane b (${lane_b[*]}); logs in $logs"
lane a "${lane_a[@]}" & pa=$!
sources=("$work/a/accuracy.json")
if [ "${#lane_b[@]}" -gt 0 ]; then lane b "${lane_b[@]}" & pb=$!; sources+=("$work/b/accuracy.json"); fi
rc=0; wait $pa || rc=$?; [ -z "${pb:-}" ] || wait $pb || rc=$?
[ "$rc" = 0 ] || { echo "a lane failed (exit $rc): see $logs; the rows it finished are in $work (kept)" >&2; trap - EXIT; exit "$rc"; }
python benchmarks/accuracy.py --merge-from "${sources[@]}" "${merge[@]}" --out "$out" > "$logs/merge.log"
if [ "${SMOKE:-0}" = 1 ]; then  # the merged rows, before the temporary folder goes
  python -c "import json, sys; print([(r['method'], r['seeds']) for r in json.load(open(sys.argv[1]))['rows']])" \
    "$out/accuracy.json"
else
  echo "merged into $out/accuracy.json; now: python benchmarks/report.py && python benchmarks/report.py --check"
fi
exit
}
