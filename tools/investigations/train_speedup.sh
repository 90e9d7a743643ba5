#!/usr/bin/env bash
# Issue 10's speed-up, measured back to back in one run: today's `toolkit train` (commit e0182dc,
# float32, per-epoch checkpoint on the training thread) against this checkout's default, each a
# full 20-epoch training of CNN_1L_Dropout_Exp6 (seed 0) into a fresh artifacts root.
#
#   tools/investigations/train_speedup.sh                  # one pair: before, then after; prints the ratio
#   tools/investigations/train_speedup.sh --repeat 2       # before, after, after, before (order effects cancel)
#   tools/investigations/train_speedup.sh --with-off       # also this checkout with --mixed-precision off
#   tools/investigations/train_speedup.sh --with-bf16      # also this checkout with --mixed-precision bf16
#   tools/investigations/train_speedup.sh --reuse-venv     # run e0182dc on ./.venv (same pinned dependencies)
#   tools/investigations/train_speedup.sh --reuse-venv --quick   # 1 epoch on 2,000 images: checks the script only
#
# "before" runs e0182dc's code, unpacked with `git archive` into a temporary folder (no worktree
# or other git state is created) and installed into its own virtual environment there (pip, a few
# minutes; --reuse-venv runs it on ./.venv with PYTHONPATH instead, allowed only when
# pyproject.toml is unchanged since e0182dc). "after" runs this checkout's .venv/bin/toolkit.
# Each run's wall time covers the whole command (start-up, data, 20 epochs, test evaluation,
# saving); CPU s is the command's user+system time (it grows far less than wall time when other
# work competes for the cores); train s is the toolkit's own figure (epochs only). Run it on a
# quiet machine: the load average before and after each run is printed. Goal: ratio >= 1.98 with
# test accuracy inside the float32 seed range (README table).
set -euo pipefail

BASE_COMMIT=e0182dc
EXP=CNN_1L_Dropout_Exp6
REPEAT=1
WITH_OFF=0
WITH_BF16=0
REUSE_VENV=0
KEEP=0
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --with-off) WITH_OFF=1; shift ;;
    --with-bf16) WITH_BF16=1; shift ;;
    --reuse-venv) REUSE_VENV=1; shift ;;
    --keep) KEEP=1; shift ;;
    --quick) QUICK="--epochs 1 --limit-train 2000"; shift ;;
    --exp) EXP=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1; see $0 --help" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/../.." && pwd)
NEW_BIN="$REPO/.venv/bin/toolkit"
[ -x "$NEW_BIN" ] || { echo "error: $NEW_BIN not found; run 'make setup' first" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/train-speedup.XXXXXX")
if [ "$KEEP" = 0 ]; then trap 'rm -rf "$WORK"' EXIT; fi
echo "work folder: $WORK; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

mkdir "$WORK/base"
git -C "$REPO" archive "$BASE_COMMIT" | tar -x -C "$WORK/base"
if [ "$REUSE_VENV" = 1 ]; then
  if ! git -C "$REPO" diff --quiet "$BASE_COMMIT" HEAD -- pyproject.toml; then
    echo "error: pyproject.toml changed since $BASE_COMMIT; run without --reuse-venv" >&2; exit 2
  fi
  BASE_CMD=(env "PYTHONPATH=$WORK/base" "$REPO/.venv/bin/python" -m toolkit.cli)
  (cd "$WORK" && PYTHONPATH="$WORK/base" "$REPO/.venv/bin/python" -c \
    "import toolkit; assert toolkit.__file__.startswith('$WORK/base'), toolkit.__file__")
else
  echo "installing $BASE_COMMIT into its own virtual environment (a few minutes) ..."
  python3 -m venv "$WORK/venv-base"
  "$WORK/venv-base/bin/pip" install -q --upgrade pip
  "$WORK/venv-base/bin/pip" install -q "$WORK/base"
  BASE_CMD=("$WORK/venv-base/bin/toolkit")
fi

run() {  # label artifacts-root "extra train options" command...
  local label=$1 root=$2 extra=$3; shift 3
  # shellcheck disable=SC2086  # $QUICK and $extra are lists of options
  (cd "$WORK" && python3 - "$label" "$root" "$EXP" "$@" train --exp "$EXP" --seed 0 --artifacts "$root" \
      $QUICK $extra <<'PY'
import json, os, resource, subprocess, sys, time

label, root, exp, *cmd = sys.argv[1:]
def load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
before, start = load(), time.perf_counter()
with open(f"{root}.log", "w") as log:
    code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
if code:
    sys.exit(f"error: {label} failed (exit {code}); see {root}.log")
m = json.load(open(f"{root}/{exp}/metrics.json"))
print("\t".join([label, m["run_id"], m.get("mixed_precision", "off"), f"{wall:.1f}",
                 f"{usage.ru_utime + usage.ru_stime:.1f}", f"{m['train_seconds']:.1f}",
                 f"{m['test_accuracy']:.4f}", before, load()]))
PY
  ) | tee -a "$WORK/rows.tsv"
}

printf 'run\trun id\tprecision\twall s\tCPU s\ttrain s\ttest acc\tload before\tload after\n' | tee "$WORK/rows.tsv"
for i in $(seq 1 "$REPEAT"); do
  if [ $((i % 2)) = 1 ]; then order="before after"; else order="after before"; fi
  for side in $order; do
    if [ "$side" = before ]; then run "before-$i" "$WORK/art-before-$i" "" "${BASE_CMD[@]}"
    else run "after-$i" "$WORK/art-after-$i" "" "$NEW_BIN"; fi
  done
  if [ "$WITH_OFF" = 1 ]; then
    run "after-off-$i" "$WORK/art-off-$i" "--mixed-precision off" "$NEW_BIN"
  fi
  if [ "$WITH_BF16" = 1 ]; then
    run "after-bf16-$i" "$WORK/art-bf16-$i" "--mixed-precision bf16" "$NEW_BIN"
  fi
done

python3 - "$WORK/rows.tsv" <<'PY'
import statistics, sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])][1:]
if len(rows) < 2 or any(len(r) < 9 for r in rows):
    sys.exit("error: a run failed; see the logs above")
def mean(prefix, col):
    vals = [float(r[col]) for r in rows if r[0].rsplit("-", 1)[0] == prefix]
    return statistics.fmean(vals) if vals else None
wall = mean("before", 3) / mean("after", 3)
cpu = mean("before", 4) / mean("after", 4)
epochs = mean("before", 5) / mean("after", 5)
print(f"\nspeed-up of the default `toolkit train` (wall time of the whole command): {wall:.2f}x "
      f"({mean('before', 3):.0f} s -> {mean('after', 3):.0f} s); epochs only (train s): {epochs:.2f}x; "
      f"CPU time: {cpu:.2f}x")
print(f"goal (>= 1.98x, after <= 300 s on the 2-core development machine): "
      f"{'met' if wall >= 1.98 else 'NOT met'}")
if mean("after-off", 3):
    print(f"this checkout with --mixed-precision off: {mean('before', 3) / mean('after-off', 3):.2f}x "
          "(background checkpoint only; the same weights as before)")
if mean("after-bf16", 3):
    print(f"this checkout with --mixed-precision bf16: {mean('before', 3) / mean('after-bf16', 3):.2f}x "
          f"({mean('before', 3):.0f} s -> {mean('after-bf16', 3):.0f} s)")
PY
