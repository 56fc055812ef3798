#!/bin/bash
# Run on a machine with a CUDA GPU from the repo root, with OUT set to a folder for the log. Where the
# GPU machine lacks torchrl / tensordict / minari / gymnasium / omegaconf, put their wheels (Python 3.12,
# manylinux) in .whl/ first; the first line installs them into /tmp/site.
# The GPU paths: trainer-timed bench eager and graphed, offrl train on cuda, the GPU tests.
export PYTHONUNBUFFERED=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD OFFRL_CACHE=/tmp/cache
L=$OUT/gpu2.log
summ() { python3 -c "import json,sys,glob; d=json.load(open(glob.glob(sys.argv[1])[0])); print('  ->', d.get('status'), 'steps', d.get('steps'), 'updates/s', d.get('updates_per_s'))" "$1"; }
{
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__)"
echo "== mixed-device ops (eager, 3 updates)"; timeout 60 python3 benchmarks/gpu/mixed_device_ops.py 2>&1 | grep -v INFO | head -60
for w in cql dqn discrete-cql; do
  n=$([ $w = cql ] && echo 300 || echo 2000)
  echo "== bench $w eager"; timeout 60 python3 -m offrl bench $w --device cuda --updates $n 2>&1 | grep -v INFO | tail -3
  echo "== bench $w cuda-graph"; timeout 60 python3 -m offrl bench $w --device cuda --cuda-graph --updates $((n*5)) 2>&1 | grep -v "INFO\|Warning" | tail -3
done
for g in false true; do
  echo "== train pendulum cql cuda_graph=$g"
  timeout 90 python3 -m offrl train --dataset offrl/pendulum/medium-v0 --device cuda --steps 3000 --eval-every 0 --no-progress --out /tmp/runs --name g$g --set cuda_graph=$g 2>&1 | grep -v INFO | tail -3
  summ "/tmp/runs/*/cql/g$g/summary.json"
done
for a in dqn discrete-cql; do
  echo "== train cartpole $a cuda_graph=true"
  timeout 60 python3 -m offrl train --dataset offrl/cartpole/medium-v0 --algo $a --device cuda --steps 5000 --eval-every 0 --no-progress --out /tmp/runs --name g --set cuda_graph=true 2>&1 | grep -v INFO | tail -3
  summ "/tmp/runs/*/$a/g/summary.json"
done
echo "== train pendulum cql with evaluation on cuda (2000 steps, eval every 1000)"
timeout 90 python3 -m offrl train --dataset offrl/pendulum/medium-v0 --device cuda --steps 2000 --eval-every 1000 --no-progress --out /tmp/runs --name ev 2>&1 | grep -v INFO | tail -3
echo "== vectorized seeds on cuda (8 seeds, one group): CQL on Pendulum, discrete CQL on CartPole"
timeout 120 python3 benchmarks/vectorized_seeds.py --device cuda --algos cql --dataset offrl/pendulum/medium-v0 --seeds 8 --steps 300 --rounds 1 --jobs 1 --vectorized-jobs 1 2>&1 | grep -v INFO | tail -2
timeout 90 python3 benchmarks/vectorized_seeds.py --device cuda --algos discrete-cql --seeds 8 --steps 500 --rounds 1 --jobs 1 --vectorized-jobs 1 2>&1 | grep -v INFO | tail -2
echo "== gpu tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/trainers/test_trainer_precision_graph.py tests/bench/test_bench.py tests/data/test_data_buffer.py 2>&1 | tail -15
} > $L 2>&1
tail -c 11500 $L
