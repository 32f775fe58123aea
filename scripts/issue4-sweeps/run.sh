#!/usr/bin/env bash
# The issue-4 sweeps (docs/training.md §7): every run file of one folder here trained at once,
# 2 threads each (the runs were made 8 at a time on a 16-core host), then tested at 1x, 4x and 16x
# (64x too for the 1,500-step runs). A name with "base" trains the baseline derived from the run,
# "both" trains both models. Results of the runs made: results.log.
#   Usage, from a folder holding data/corpus/: bash scripts/issue4-sweeps/run.sh sweep3 [seconds]
# DRT (default build/tools/drt) is the tool; OUT (default /tmp/issue4-sweeps) gets logs.tgz.
here=$(cd "$(dirname "$0")" && pwd)
dir=$1; limit=${2:-3600}
B=${DRT:-build/tools/drt}
OUT=${OUT:-/tmp/issue4-sweeps}
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
mkdir -p /tmp/sw $OUT/logs
for f in "$here/$dir"/*.json; do
  n=$(basename $f .json)
  models=$(case $n in *base*) echo baseline;; *both*) echo drt,baseline;; *) echo drt;; esac)
  multiples=$(case $n in *1500*) echo 1,4,16,64;; *) echo 1,4,16;; esac)
  (timeout $limit $B lengthgen --run $f --out /tmp/sw/$n --models $models --trials 32 --multiples $multiples > $OUT/logs/$n.log 2>&1
   # Stopped by the time limit: test the last checkpoint instead.
   if [ ! -f /tmp/sw/$n/results.md ] && ls -d /tmp/sw/$n/*/checkpoint >/dev/null 2>&1; then
     t=$(python3 -c "import json;print(json.load(open('$f'))['seq_len'])")
     $B eval --checkpoint $(ls -d /tmp/sw/$n/*/checkpoint | head -1) --passkey $t,$((4 * t)),$((16 * t)) --trials 32 >> $OUT/logs/$n.log 2>&1
   fi) &
done
wait
cd $OUT && tar czf logs.tgz logs && rm -rf logs
