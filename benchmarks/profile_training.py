"""Where a training step of a head (annotation, or integration with ``--head``) spends its time (torch.profiler).

One epoch on synthetic data (default 20,000 cells x 10,000 genes, ~1,000 non-zeros per
cell, d = 384) after a warm-up epoch; prints and writes the operators by self CPU time
and, on CUDA, by self GPU time, with launches and host syncs per step::

    python benchmarks/profile_training.py --device cuda --batch-size 128 --out benchmarks/results/profile

Writes ``OUT/profile_<head>_<device>_b<batch>.txt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--head", choices=["annotation", "integration"], default="annotation")
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-on-device", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "profile")
    args = ap.parse_args(argv)
    from _synthetic import generate_csr, random_embedding
    from scelmo_torch.annotation import AnnotationHead
    from scelmo_torch.integration import IntegrationHead
    from torch.profiler import ProfilerActivity, profile

    from scelmo.expression.selection import normalize_chunk

    X = normalize_chunk(generate_csr(args.cells, 10_000, 1_000, seed=0)).astype(np.float32)
    E = random_embedding(10_000, 384)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, args.cells).astype(str)
    # the integration head: two batches, labels given (its semi-supervised mode)
    if args.head == "annotation":
        make, extra = (lambda: AnnotationHead(refit_steps=0)), {}
    else:
        make, extra = IntegrationHead, {"batch": rng.integers(0, 2, args.cells).astype(str)}
    on_device = {"auto": None, "yes": True, "no": False}[args.data_on_device]
    training = {"max_epochs": 1, "early_stopping": False, "batch_size": args.batch_size, "device": args.device,
                "validation_fraction": 0.0, "num_threads": 1, "data_on_device": on_device}
    make().fit(X, y, gene_vectors=E, training=training, **extra)  # warm-up (CUDA context, kernels)
    head = make()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        head.fit(X, y, gene_vectors=E, training=training, **extra)
    wall = time.perf_counter() - t0
    steps = int(np.ceil(args.cells / args.batch_size))
    ka = prof.key_averages()
    count = {e.key: e.count for e in ka}
    launches = sum(v for k, v in count.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(v for k, v in count.items() if k in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
    lines = [f"{args.head} head, {args.cells} cells, batch {args.batch_size}, device {args.device}, "
             f"data_on_device {args.data_on_device}: {steps} steps; epoch {head.history[-1]['seconds']:.3f} s "
             f"({1e3 * head.history[-1]['seconds'] / steps:.2f} ms/step; fit under the profiler {wall:.1f} s)",
             f"per step: {launches / steps:.1f} kernel launches, {syncs / steps:.2f} host syncs, "
             f"{sum(e.count for e in ka if e.key.startswith('aten::')) / steps:.0f} aten calls",
             "", ka.table(sort_by="self_cpu_time_total", row_limit=25)]
    if args.device.startswith("cuda"):
        lines += ["", ka.table(sort_by="self_cuda_time_total", row_limit=15)]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{args.head}_{args.device.replace(':', '')}_b{args.batch_size}.txt").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
