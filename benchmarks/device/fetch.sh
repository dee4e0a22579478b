#!/usr/bin/env bash
# Run HERE (this machine), from the repository root, before the device run: the wheels the device
# machine lacks (it has torch, numpy, scipy, pandas, matplotlib, scikit-learn, pluggy, tqdm,
# protobuf, pytest; no EvoTorch, no Ray, no network) into .whl/, and MNIST into .devdata/.
# Both folders are git-ignored; name them in the device call's `carry`: [".whl", ".devdata"].
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl .devdata
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl evotorch==0.6.1 gymnasium==1.4.0 farama-notifications==0.0.6 cma==4.5.0 tensorboardX==2.6.5 \
    mnist1d==0.0.2.post1
data="${EVOENS_DATA_DIR:-../shared/data}"
rm -rf .devdata/mnist && cp -r "$data/mnist" .devdata/mnist
du -sh .whl .devdata
