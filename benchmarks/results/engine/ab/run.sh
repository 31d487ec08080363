#!/bin/bash
# A/B: before and main alternately, 3 rounds, for the flagged rows
source /work/venv/bin/activate
cd /tmp/bench; mkdir -p ab
export TORCH_EXTENSIONS_DIR=/tmp/ext-before
for round in 1 2 3; do
  for side in before after; do
    for only in "GRU packed" "LSTM packed" "LSTM (25,64,512)" "LSTM (100,32,1024)" "GRU (100,16,128)"; do
      tag=$(echo "$only" | tr -c 'a-zA-Z0-9' '_')
      PYTHONPATH=<checkout of $side> python -m lstmkit.cli bench --only "$only" --repeats 9 --reference none --json ab/full-$tag-$side-$round.json > /dev/null 2>&1
    done
    for only in "NOG" "NIAF" "NOAF" "FGR" "layer-norm LSTM" "layer-norm GRU" "zoneout" "input dropout" "peephole" "NIG"; do
      tag=$(echo "$only" | tr -c 'a-zA-Z0-9' '_')
      PYTHONPATH=<checkout of $side> python -m lstmkit.cli bench --variants --only "$only" --repeats 9 --json ab/var-$tag-$side-$round.json > /dev/null 2>&1
    done
  done
done
touch ab/done
