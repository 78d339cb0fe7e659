#!/usr/bin/env bash
# The CUDA checks that CPU CI cannot run, in one short pass (at most 9 minutes on an H100/H200,
# part 4 compiling): every GPU test of the suite (the slow training one aside),
# then the side-by-side timings that the README quotes for CUDA graphs. Run from the
# repository root on a machine with a GPU and torch + torchdiffeq installed (no install step):
#     OUT=gpu-results bash benchmarks/gpu_checks.sh
# Each part has its own time limit so that one stuck part leaves the others' results.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# 0. Wheels the GPU machine lacks (nibabel and nilearn, for the EPI GPU tests), carried in .whl/:
#    fetched here with `python3 -m pip download --no-deps --only-binary=:all: --python-version
#    3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel nilearn`; the
#    device call names .whl in its carry list. Without them the EPI GPU tests skip.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

# 1. Every GPU test that is not slow: captured adjoint = eager adjoint, capture-unsafe and
#    stochastic fields, running statistics under replay, CUDA generator replay in the eager
#    adjoint, mixed precision against fp64, allocator bytes of the adjoint, per-sample gradients
#    under torch.func, OT-Flow training step, fit over NCCL, EPI and jets CUDA = CPU
timeout 150 python -m pytest -q -p no:cacheprovider --device cuda -m "not slow" -k "gpu or cuda" \
    tests 2>&1 | tee "$OUT/pytest_graphs.log"

# 2. ODE engine, mlp (launch-bound: where CUDA graphs matter) and conv
timeout 170 python benchmarks/ode_peers.py --device cuda --workloads mlp conv \
    --solvers odeflow-adjoint odeflow-adjoint+graphs torchdiffeq \
    --precisions fp32 bf16 --repeats 5 --json "$OUT/ode_graphs.json" 2>&1 | tee "$OUT/ode.log"

# 3. OT-Flow against the matched-step Hutchinson CNF at d = 43 (issue 5's goal)
timeout 80 python benchmarks/flows_peers.py --device cuda --dims 43 --parts speed \
    --models "OT-Flow,matched" --repeats 5 --json "$OUT/flows_graphs.json" 2>&1 | tee "$OUT/flows.log"

# 4. OT-Flow with the compiled field inside the captured adjoint steps (compiles first: slower),
#    in the same run as the matched-step and the FFJORD-faithful (adaptive dopri5) Hutchinson CNF
timeout 180 python benchmarks/flows_peers.py --device cuda --dims 43 --parts speed --compile \
    --models "+compile+graphs,matched,FFJORD" --warm-iters 100 --repeats 5 \
    --json "$OUT/flows_compile_graphs.json" \
    2>&1 | tee "$OUT/flows_compile.log"
