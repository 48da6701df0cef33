#!/usr/bin/env bash
# Every GPU measurement in one go (about 15 minutes on an H100), to show how close the fused steps
# come to the GPU's memory bandwidth and how attacks and training compare with the baselines: the
# fused steps against copy bandwidth and torch.compile, PGD-10 / APGD / CW images/s on the ResNet-18 shapes, and
# adversarial-training epochs; then the CUDA test suite. Rows go to benchmarks/results/*_<tag>.csv
# (device name, versions and git SHA in every row).
#   bash benchmarks/run_gpu.sh h100
set -euo pipefail
tag="${1:?usage: run_gpu.sh TAG (for example h100 or h200)}"
out=benchmarks/results
python -m fastadv bench --device cuda --quiet --csv "$out/bench_step_$tag.csv"
python -m fastadv bench --attack --device cuda --quiet --models resnet18-cifar,resnet18-imagenet,digits-cnn \
    --csv "$out/bench_attack_$tag.csv"
python -m fastadv bench --attack --attacks apgd,cw --device cuda --quiet --models resnet18-cifar \
    --csv "$out/bench_attack_$tag.csv"
python -m fastadv bench --train --device cuda --quiet --models resnet18-cifar --batches 8 \
    --csv "$out/bench_train_$tag.csv"
python -m pytest -q -m cuda tests
