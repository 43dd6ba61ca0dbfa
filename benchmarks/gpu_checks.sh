#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one run: the torch tests on the GPU ("auto" picks
# CUDA there, so the head tests run on it too) and the fine-tuning speed on the GPU
# (benchmarks/finetune.py --speed-device cuda, with the host-batch baseline in the same run),
# and where a training step's time goes (benchmarks/profile_training.py, both heads).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        # default benchmarks/results/gpu
#
# Writes OUT_DIR/{gpu.txt,pytest.txt,profile_<head>_cuda_b*.txt} and OUT_DIR/finetune/{results.csv,results.md,run.json}.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SCELMO_NO_PROGRESS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } | tee "$out/gpu.txt"
"$py" -m pytest -q -p no:cacheprovider tests/test_torch_gpu.py tests/test_torch_heads.py tests/test_model.py 2>&1 | tee "$out/pytest.txt"
rc=${PIPESTATUS[0]}
# no machine paths in results: the checkout, pytest's temporary folders, the interpreter's packages
sed -i "s#$PWD/##g; s#[^ ]*/pytest-of-[^/]*/pytest-[0-9]*/#<tmp>/#g; s#[^ ]*/site-packages/#<site-packages>/#g" "$out/pytest.txt"
"$py" benchmarks/finetune.py --parts speed --speed-device cuda --out "$out/finetune" 2>&1 | tail -n 12
rc=$(( rc || PIPESTATUS[0] ))
# profiles: the annotation head at its default batch, the integration head at its default batch,
# then the annotation head at batch 1024; each capped at 150 s so a slow one leaves the others
for hb in annotation:128 integration:256 annotation:1024; do
  timeout 150 "$py" benchmarks/profile_training.py --head "${hb%%:*}" --device cuda --batch-size "${hb##*:}" \
    --out "$out" 2>&1 | grep -v USDT | head -n 34
done
exit "$rc"
