#!/usr/bin/env bash
# Probe: single-object shape design, native numerics, does the organism learn shapes at all?
set -e
cd /work/main
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PATH=/work/main/.venv/bin:$PATH TQDM_DISABLE=1 SEG4DIFF_NUMERICS=native
S="--set data.shapes.design=shape --set data.shapes.min_objects=1 --set data.shapes.max_objects=1 --set data.shapes.num_val=200 --set data.shapes.num_test=200 --set data.root=models/probe1/raw --set prepare.output=models/probe1/prepared"
[ -d models/probe1/prepared/test.zarr ] || python -m flows.prepare $S
python -m flows.pretrain $S --set pretrain.steps=${STEPS:-1200} --set pretrain.output=models/probe1/organism --set pretrain.work_dir=models/probe1/work
python models/scratch/check.py models/probe1/organism 128 models/probe1/prepared/val.zarr
