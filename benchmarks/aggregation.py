"""Benchmark of the cell-embedding aggregation ``C = X @ E`` (targets K1..K5, M1 of
the project's performance analysis; see docs/performance.md).

In one process it measures:

* a dense float32 SGEMM probe (``n^3`` numpy matmul, 1 and 2 BLAS threads; the
  FMA-peak proxy -- records ``OPENBLAS_CORETYPE`` and the BLAS core type that
  threadpoolctl reports, since OpenBLAS misdetects some CPUs as Haswell);
* a memory-bandwidth probe (numba ``prange`` sum over a 1 GiB float32 array with 1
  and 2 threads; ``np.copyto`` of 1 GiB, read + write counted);
* the scipy baseline ``X @ E`` (float32 CSR @ float32 dense, single-threaded),
  on a slice of ``--baseline-cells`` cells (scipy is slow; per-cell numbers are
  scaled to 1M cells);
* ``scelmo_zeroshot.kernels.csr_matmul`` on the same slice (1 thread: the K1 ratio
  is taken on identical rows) and on all ``--cells`` cells with each of
  ``--threads`` numba threads; the CSR row-gather variant on the slice for
  comparison.

All timings are min-of-``--repeats`` of process CPU time (``time.process_time``,
all threads) and wall time; ``/proc/loadavg`` is recorded around every
measurement, because the 2-core development box is shared.  Gate on ratios
measured in the same run, never on absolute seconds.

Usage::

    python benchmarks/aggregation.py                 # full run (100k cells)
    python benchmarks/aggregation.py --cells 20000   # quick check

Writes ``<out>/aggregation.json`` and ``<out>/aggregation.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

for p in (str(HERE), str(ROOT / "plugins"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _synthetic import gene_model, generate_csr, random_embedding  # noqa: E402

# The kernel gates K1-K5 and M1 (their limits are written with the results; ratios measured in the same run).
K1_RATIO = {384: 0.60, 1536: 0.45}
K2_SGEMM_FRACTION = 0.13
K4_WALL_RATIO = 0.55
K5_FACTOR_FP32 = 7.5  # wall <= 7.5 x the 2-core fp32 FMA bound (fp32 E)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def loadavg() -> list[float]:
    try:
        return [float(x) for x in _read("/proc/loadavg").split()[:3]]
    except OSError:
        return []


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        for line in _read("/proc/self/status").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    try:
        for line in _read("/proc/self/status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_busy_s() -> float | None:
    """CPU-seconds all CPUs of the machine spent busy (from /proc/stat)."""
    try:
        f = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


#: extra repeats allowed when every repeat so far overlapped with another job
EXTRA_REPEATS = 2
#: a repeat is "clean" when other jobs used < this fraction of one core during it
CLEAN_OTHER_FRACTION = 0.1


def measure(fn, repeats: int, extra: int | None = None, threads: int = 1) -> dict:
    """min-of-N process CPU time and wall time of ``fn()``.

    ``other_cpu_s`` is the CPU time the rest of the machine used during each call
    (system busy time from /proc/stat minus ours).  A repeat is clean when other
    jobs left our ``threads`` cores free: their CPU time is below
    ``(n_cpus - threads + CLEAN_OTHER_FRACTION)`` x its wall time; if none of the
    ``repeats`` is clean, up to ``extra`` more are run.  The minima are
    taken over the clean repeats when there are any (``clean`` = True).
    """
    extra = EXTRA_REPEATS if extra is None else extra
    spare = max(0, (os.cpu_count() or 1) - threads) + CLEAN_OTHER_FRACTION
    cpus, walls, loads, others = [], [], [], []

    def n_clean():
        return sum(1 for w, o in zip(walls, others, strict=True) if o is not None and o < spare * w)

    i = 0
    while i < max(1, repeats) or (n_clean() == 0 and i < max(1, repeats) + extra):
        i += 1
        loads.append(loadavg()[0] if loadavg() else None)
        gc.collect()
        b0 = system_busy_s()
        c0 = time.process_time()
        w0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        b1 = system_busy_s()
        others.append(None if b0 is None or b1 is None else max(0.0, (b1 - b0) - cpus[-1]))
    clean = [k for k in range(len(walls)) if others[k] is not None and others[k] < spare * walls[k]]
    use = clean or list(range(len(walls)))
    best = min(use, key=lambda k: walls[k])
    return {
        "cpu_s": min(cpus[k] for k in use),
        "wall_s": walls[best],
        "clean": bool(clean),
        "n_clean": len(clean),
        "cpu_all": cpus,
        "wall_all": walls,
        "loadavg_1min": loads,
        "other_cpu_s_all": others,
        "other_cpu_s_at_min_wall": others[best],
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------


def sgemm_probe(n: int, repeats: int, threads: int) -> dict:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(7)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm
        m = measure(lambda: a @ b, repeats, threads=threads)
    flops = 2.0 * n**3
    return {
        "n": n,
        "threads": threads,
        "wall_s": m["wall_s"],
        "cpu_s": m["cpu_s"],
        "gflops": flops / m["wall_s"] / 1e9,
        "gflops_per_core_cpu": flops / m["cpu_s"] / 1e9,
        "other_cpu_s_at_min_wall": m["other_cpu_s_at_min_wall"],
        "clean": m["clean"],
    }


def blas_info() -> dict:
    info = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info

        blas = [x for x in threadpool_info() if x.get("user_api") == "blas"]
        if blas:
            info.update(
                internal_api=blas[0].get("internal_api"),
                version=blas[0].get("version"),
                architecture=blas[0].get("architecture"),
                num_threads=blas[0].get("num_threads"),
            )
    except Exception as exc:  # pragma: no cover - informational
        info["error"] = repr(exc)
    return info


def bandwidth_probe(gib: float, repeats: int, thread_counts: list[int]) -> dict:
    import numba as nb

    @nb.njit(parallel=True, nogil=True, fastmath=True)
    def psum(a):
        s = 0.0
        for i in nb.prange(a.shape[0]):
            s += a[i]
        return s

    n = int(gib * (1 << 30)) // 4
    a = np.ones(n, dtype=np.float32)
    out: dict = {"bytes": a.nbytes, "read": {}}
    prev = nb.get_num_threads()
    try:
        for t in thread_counts:
            nb.set_num_threads(t)
            psum(a[:1024])
            m = measure(lambda a=a: psum(a), repeats, threads=t)
            out["read"][str(t)] = a.nbytes / m["wall_s"] / 1e9
    finally:
        nb.set_num_threads(prev)
    b = np.empty_like(a)
    np.copyto(b, a)
    m = measure(lambda a=a, b=b: np.copyto(b, a), repeats)
    out["copy_1thread_rw"] = 2 * a.nbytes / m["wall_s"] / 1e9
    del a, b
    gc.collect()
    return out


# ---------------------------------------------------------------------------------
# main benchmark
# ---------------------------------------------------------------------------------


def csr_slice(X, n_rows: int):
    """The first ``n_rows`` rows of CSR ``X`` as a view (no copy of data or indices)."""
    import scipy.sparse as sp

    n_rows = min(n_rows, X.shape[0])
    nz = int(X.indptr[n_rows])
    # Assigned, not passed to the constructor: scipy's constructor copied these slices
    # (0.5 GB for 20k cells, counted in every later peak-RSS row of the run)
    Xs = sp.csr_matrix((n_rows, X.shape[1]), dtype=X.dtype)
    Xs.data, Xs.indices, Xs.indptr = X.data[:nz], X.indices[:nz], X.indptr[: n_rows + 1]
    if not (np.shares_memory(Xs.indices, X.indices) and np.shares_memory(Xs.data, X.data)):
        raise RuntimeError("csr_slice copied X; the peak-RSS rows would count the copy")
    Xs.has_sorted_indices = True
    return Xs


def run(args) -> dict:
    import numba
    import scipy
    from scelmo_zeroshot import kernels as K

    t_start = time.perf_counter()
    reset_peak_rss()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "numba_threading_layer_env": os.environ.get("NUMBA_THREADING_LAYER"),
        "cpu": _cpu_name(),
        "n_cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "blas": blas_info(),
        "kernel": {
            "default_width": K.DEFAULT_WIDTH,
            "vector_lanes": K._VEC,
            "tile_bytes": K._TILE_BYTES,
            "chunk_rows": K._chunk_rows(args.width or K.DEFAULT_WIDTH),
        },
    }
    meta["blas"]["coretype_note"] = (
        "OPENBLAS_CORETYPE is set"
        if meta["blas"]["OPENBLAS_CORETYPE"]
        else "OPENBLAS_CORETYPE not set: the probe ran on the core type OpenBLAS detected "
        f"({meta['blas'].get('architecture')}); on the research box's Zen 5 that is Haswell (AVX2, ~2x slower)"
    )
    threads = sorted(set(args.threads))
    log(
        f"loadavg {meta['loadavg_start']}  cpu={meta['cpu']}  blas={meta['blas'].get('architecture')}"
    )

    # --- probes -------------------------------------------------------------------
    probes: dict = {"sgemm": {}, "bandwidth": None}
    if not args.skip_probes:
        for t in threads:
            probes["sgemm"][str(t)] = sgemm_probe(args.sgemm_n, args.repeats, t)
            log(
                f"SGEMM {args.sgemm_n}^3, {t} thread(s): {probes['sgemm'][str(t)]['gflops']:.1f} GFLOP/s"
            )
        probes["bandwidth"] = bandwidth_probe(args.bandwidth_gib, args.repeats, threads)
        log(
            f"bandwidth: read {probes['bandwidth']['read']} GB/s, copy {probes['bandwidth']['copy_1thread_rw']:.1f} GB/s"
        )

    # --- data -----------------------------------------------------------------------
    numba.set_num_threads(max(threads))
    model = gene_model(args.genes, args.nnz, seed=args.seed)
    c0, w0 = time.process_time(), time.perf_counter()
    X = generate_csr(args.cells, args.genes, args.nnz, seed=args.seed, model=model)
    gen = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    nnz = int(X.nnz)
    x_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    log(
        f"generated {args.cells} x {args.genes}, nnz/cell {nnz / max(1, args.cells):.1f}, "
        f"{x_bytes / 1e9:.2f} GB in {gen['wall_s']:.1f} s"
    )
    n_base = min(args.baseline_cells, args.cells)
    Xb = csr_slice(X, n_base)
    nnz_b = int(Xb.nnz)

    results: list[dict] = []
    checks: dict = {}

    def record(d, impl, nthreads, rows, nz, m, rss_peak, extra=None):
        flops = 2.0 * nz * d
        row = {
            "d": d,
            "impl": impl,
            "threads": nthreads,
            "rows": rows,
            "nnz": nz,
            "cpu_s": m["cpu_s"],
            "wall_s": m["wall_s"],
            "cpu_s_per_1M_cells": m["cpu_s"] / rows * 1e6,
            "wall_s_per_1M_cells": m["wall_s"] / rows * 1e6,
            "cells_per_s_wall": rows / m["wall_s"],
            "gflops_wall": flops / m["wall_s"] / 1e9,
            "gflops_per_core_cpu": flops / m["cpu_s"] / 1e9,
            "peak_rss_bytes": rss_peak,
            "loadavg_1min": m["loadavg_1min"],
            "other_cpu_s_at_min_wall": m["other_cpu_s_at_min_wall"],
            "clean": m["clean"],
            "n_clean": m["n_clean"],
            "cpu_all": m["cpu_all"],
            "wall_all": m["wall_all"],
        }
        # compulsory DRAM bytes: X (values + indices + indptr), C, E once
        idx_b = X.indices.dtype.itemsize
        comp = (
            nz * (4 + idx_b)
            + (rows + 1) * X.indptr.dtype.itemsize
            + rows * d * 4
            + args.genes * d * 4
        )
        row["compulsory_GBps"] = comp / m["wall_s"] / 1e9
        row["E_gather_equiv_GBps"] = nz * d * 4 / m["wall_s"] / 1e9
        if extra:
            row.update(extra)
        results.append(row)
        return row

    for d in args.dims:
        log(f"--- d={d}  loadavg {loadavg()}")
        E = random_embedding(args.genes, d, seed=args.seed + 1)
        T = K.TiledEmbedding.from_matrix(E, width=args.width)
        Cb = np.empty((n_base, d), np.float32)

        # correctness on a few rows vs a float64 reference
        ncheck = min(500, n_base)
        Xc = csr_slice(X, ncheck)
        ref = Xc.astype(np.float64) @ E.astype(np.float64)
        numba.set_num_threads(max(threads))
        Cc = K.csr_matmul(Xc.indptr, Xc.indices, Xc.data, T)  # compiles on first use
        scale = np.abs(ref).max(axis=1, keepdims=True)
        scale[scale == 0] = 1.0
        checks[str(d)] = {
            "rows": ncheck,
            "max_abs_err_rel_to_row_max": float((np.abs(Cc - ref) / scale).max()),
            "max_rel_err_elementwise_p99_9": float(
                np.quantile(np.abs(Cc - ref) / np.maximum(np.abs(ref), 1e-30), 0.999)
            ),
        }
        Cg = K.csr_matmul_gather(Xc.indptr, Xc.indices, Xc.data, T)
        checks[str(d)]["gather_max_abs_err_rel_to_row_max"] = float(
            (np.abs(Cg - ref) / scale).max()
        )
        del Cc, Cg, ref, Xc

        # scipy baseline (single-threaded csr_matvecs) on the slice
        reset_peak_rss()
        m = measure(lambda E=E: K.csr_matmul_reference(Xb, E), args.repeats)
        r_scipy = record(d, "scipy X@E (CSR f32 @ f32)", 1, n_base, nnz_b, m, peak_rss_bytes())
        log(f"scipy         1 thr, {n_base} cells: {r_scipy['cpu_s_per_1M_cells']:.1f} CPU-s/1M")

        # ours, 1 thread, same slice -> K1 ratio on identical rows
        numba.set_num_threads(1)
        reset_peak_rss()
        m = measure(
            lambda T=T, Cb=Cb: K.csr_matmul(Xb.indptr, Xb.indices, Xb.data, T, out=Cb), args.repeats
        )
        r = record(
            d,
            "csr_matmul (this kernel)",
            1,
            n_base,
            nnz_b,
            m,
            peak_rss_bytes(),
            {"slice": True, "ratio_cpu_vs_scipy": m["cpu_s"] / r_scipy["cpu_s"]},
        )
        ratio_k1 = r["ratio_cpu_vs_scipy"]
        slice_wall_per_cell = m["wall_s"] / n_base
        log(
            f"csr_matmul    1 thr, {n_base} cells: {r['cpu_s_per_1M_cells']:.1f} CPU-s/1M  ratio {ratio_k1:.3f}"
        )

        if not args.skip_gather:
            numba.set_num_threads(1)
            K.csr_matmul_gather(Xb.indptr[:2], Xb.indices, Xb.data, T)
            m = measure(
                lambda T=T, Cb=Cb: K.csr_matmul_gather(Xb.indptr, Xb.indices, Xb.data, T, out=Cb),
                args.repeats,
            )
            r = record(
                d,
                "csr_matmul_gather (CSR row-gather)",
                1,
                n_base,
                nnz_b,
                m,
                None,
                {"slice": True, "ratio_cpu_vs_scipy": m["cpu_s"] / r_scipy["cpu_s"]},
            )
            log(
                f"gather        1 thr, {n_base} cells: {r['cpu_s_per_1M_cells']:.1f} CPU-s/1M  ratio {r['ratio_cpu_vs_scipy']:.3f}"
            )
        del Cb

        # ours, full matrix, 1 and 2 threads.  From here on only the tiled copy of E
        # is held (as a pipeline would), so peak RSS ~ X + E + C + runtime (M1).
        del E
        gc.collect()
        C = np.empty((args.cells, d), np.float32)
        C.fill(0)  # fault the pages in once, outside the timings
        wall_by_t = {}
        for t in threads:
            numba.set_num_threads(t)
            reset_peak_rss()
            rss_before = rss_bytes()
            m = measure(
                lambda T=T, C=C: K.csr_matmul(X.indptr, X.indices, X.data, T, out=C),
                args.repeats,
                threads=t,
            )
            r = record(
                d,
                "csr_matmul (this kernel)",
                t,
                args.cells,
                nnz,
                m,
                peak_rss_bytes(),
                {
                    "slice": False,
                    "ratio_cpu_vs_scipy": (m["cpu_s"] / args.cells) / (r_scipy["cpu_s"] / n_base),
                    "rss_before_bytes": rss_before,
                    "kernel_extra_rss_bytes": peak_rss_bytes() - rss_before,
                },
            )
            wall_by_t[t] = m["wall_s"] / args.cells
            log(
                f"csr_matmul    {t} thr, {args.cells} cells: wall {m['wall_s']:.2f} s, "
                f"{r['cpu_s_per_1M_cells']:.1f} CPU-s/1M, {r['gflops_wall']:.1f} GFLOP/s"
            )
        bytes_xec = x_bytes + T.nbytes + C.nbytes
        m1_limit = 1.15 * bytes_xec + 0.3e9
        checks[str(d)]["K1_ratio"] = ratio_k1
        checks[str(d)]["M1_bytes_X_E_C"] = bytes_xec
        checks[str(d)]["M1_limit_bytes"] = m1_limit
        if 1 in wall_by_t and 2 in wall_by_t:
            # per-cell wall; the 1-thread reference is the faster of the full run and
            # the slice run (same kernel and rows distribution), which makes the ratio
            # less sensitive to a neighbour slowing one of them down
            one = min(wall_by_t[1], slice_wall_per_cell)
            checks[str(d)]["K4_wall_2thr_over_1thr"] = wall_by_t[2] / one
        del C, T
        gc.collect()

    # --- summary / gates ----------------------------------------------------------------
    sg = probes["sgemm"]
    for row in results:
        s1 = sg.get("1")
        st = sg.get(str(row["threads"]))
        if s1:
            row["pct_sgemm_1core_per_core"] = 100.0 * row["gflops_per_core_cpu"] / s1["gflops"]
        if st:
            row["pct_sgemm_probe_wall"] = 100.0 * row["gflops_wall"] / st["gflops"]
        bw = (probes["bandwidth"] or {}).get("read", {}).get(str(row["threads"]))
        if bw:
            row["pct_bandwidth_probe"] = 100.0 * row["compulsory_GBps"] / bw

    gates = {}
    for d in args.dims:
        ck = checks[str(d)]
        g = {"K1_ratio": ck["K1_ratio"]}
        if d in K1_RATIO:
            g["K1_limit"] = K1_RATIO[d]
            g["K1_pass"] = ck["K1_ratio"] <= K1_RATIO[d]
        ours1 = [
            r
            for r in results
            if r["d"] == d
            and r["impl"].startswith("csr_matmul (")
            and r["threads"] == 1
            and not r["slice"]
        ]
        if ours1 and "1" in sg:
            frac = ours1[0]["gflops_per_core_cpu"] / sg["1"]["gflops"]
            g["K2_fraction_of_1core_sgemm"] = frac
            g["K2_pass"] = frac >= K2_SGEMM_FRACTION
        if "K4_wall_2thr_over_1thr" in ck:
            g["K4_wall_ratio"] = ck["K4_wall_2thr_over_1thr"]
            g["K4_pass"] = ck["K4_wall_2thr_over_1thr"] <= K4_WALL_RATIO
        ours2 = [
            r
            for r in results
            if r["d"] == d and r["impl"].startswith("csr_matmul (") and r["threads"] == 2
        ]
        if ours2 and "2" in sg:
            # 2-core FMA bound: the 2-thread SGEMM probe, unless load on the shared box
            # kept it below 1.8x the 1-thread probe; then 2 x the 1-thread probe.
            peak2 = sg["2"]["gflops"]
            g["K5_peak_source"] = "sgemm 2 threads"
            if "1" in sg and peak2 < 1.8 * sg["1"]["gflops"]:
                peak2 = 2.0 * sg["1"]["gflops"]
                g["K5_peak_source"] = "2 x sgemm 1 thread (2-thread probe disturbed by load)"
            g["K5_peak_gflops_2core"] = peak2
            bound_1m = 2.0 * args.nnz * 1e6 * d / (peak2 * 1e9)  # s per 1M cells
            g["K5_wall_s_per_1M_cells_2thr"] = ours2[0]["wall_s_per_1M_cells"]
            g["K5_bound_s_per_1M"] = bound_1m
            g["K5_x_bound"] = ours2[0]["wall_s_per_1M_cells"] / bound_1m
            g["K5_pass_fp32"] = g["K5_x_bound"] <= K5_FACTOR_FP32
        peaks = [
            r["peak_rss_bytes"]
            for r in results
            if r["d"] == d and not r.get("slice", True) and r["peak_rss_bytes"]
        ]
        if peaks:
            g["M1_peak_rss_bytes"] = max(peaks)
            g["M1_limit_bytes"] = ck["M1_limit_bytes"]
            g["M1_pass"] = max(peaks) <= ck["M1_limit_bytes"]
            g["kernel_extra_rss_bytes"] = max(
                r.get("kernel_extra_rss_bytes", 0) for r in results if r["d"] == d
            )
        g["max_err_rel_to_row_max"] = ck["max_abs_err_rel_to_row_max"]
        gates[str(d)] = g

    meta["loadavg_end"] = loadavg()
    meta["total_wall_s"] = time.perf_counter() - t_start
    return {
        "meta": meta,
        "params": {
            "cells": args.cells,
            "genes": args.genes,
            "nnz_per_cell_target": args.nnz,
            "nnz_per_cell": nnz / max(1, args.cells),
            "nnz": nnz,
            "dims": args.dims,
            "repeats": args.repeats,
            "baseline_cells": n_base,
            "threads": threads,
            "width": args.width or K.DEFAULT_WIDTH,
            "seed": args.seed,
            "x_bytes": x_bytes,
            "generation": gen,
        },
        "probes": probes,
        "checks": checks,
        "gates": gates,
        "results": results,
        "process_peak_rss_bytes_end": peak_rss_bytes(),
    }


def _cpu_name() -> str:
    try:
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fmt(x, spec="{:.1f}"):
    return "–" if x is None else spec.format(x)


def to_markdown(res: dict) -> str:
    m, p, pr = res["meta"], res["params"], res["probes"]
    L = []
    L.append("# Aggregation benchmark: C = X @ E")
    L.append("")
    L.append(
        f"{m['date']} · {m['cpu']} · {m['n_cpus']} CPUs · numpy {m['numpy']} · scipy {m['scipy']} · numba {m['numba']} · "
        f"loadavg start {m['loadavg_start']} end {m['loadavg_end']} · total {m['total_wall_s']:.0f} s"
    )
    L.append("")
    L.append(
        f"Data: {p['cells']:,} cells x {p['genes']:,} genes, {p['nnz_per_cell']:.1f} nnz/cell ({p['x_bytes'] / 1e9:.2f} GB CSR), "
        f"section-2 generator seed {p['seed']}; scipy baseline and K1 ratio on the first {p['baseline_cells']:,} cells; "
        f"min of {p['repeats']} (CPU = process CPU time, all threads). Kernel block width W={p['width']}."
    )
    L.append("")
    b = m["blas"]
    if pr.get("sgemm"):
        s = ", ".join(
            f"{t} thr {v['gflops']:.1f} GFLOP/s{'' if v.get('clean', True) else ' (disturbed by load)'}"
            for t, v in pr["sgemm"].items()
        )
        L.append(
            f"SGEMM probe ({next(iter(pr['sgemm'].values()))['n']}^3 f32, {b.get('internal_api')} {b.get('version')}, "
            f"core type {b.get('architecture')}; {b.get('coretype_note')}): {s}."
        )
    if pr.get("bandwidth"):
        bw = pr["bandwidth"]
        s = ", ".join(f"{t} thr {v:.1f} GB/s" for t, v in bw["read"].items())
        L.append(
            f"Bandwidth probe (numba prange sum, 1 GiB): {s}; np.copyto {bw['copy_1thread_rw']:.1f} GB/s (read+write)."
        )
    L.append("")
    hdr = (
        "| d | implementation | thr | cells | CPU-s / 1M cells | wall-s / 1M cells | cells/s (wall) | GFLOP/s (wall) | "
        "GFLOP/s/core (CPU) | CPU ratio vs scipy | % SGEMM probe (per core / wall) | GB/s compulsory (% bw probe) | "
        "E-gather GB/s | peak RSS | load 1-min | clean runs; other jobs' CPU-s in the best |"
    )
    L.append(hdr)
    L.append("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    for r in res["results"]:
        loads = [x for x in r["loadavg_1min"] if x is not None]
        L.append(
            "| {d} | {impl}{sl} | {t} | {rows:,} | {cpu} | {wall} | {cps} | {gfw} | {gfc} | {ratio} | {psg} | {gbs} | {eg} | {rss} | {ld} | {oth} |".format(
                d=r["d"],
                impl=r["impl"],
                sl=" (slice)" if r.get("slice") else "",
                t=r["threads"],
                rows=r["rows"],
                cpu=_fmt(r["cpu_s_per_1M_cells"]),
                wall=_fmt(r["wall_s_per_1M_cells"]),
                cps=_fmt(r["cells_per_s_wall"], "{:,.0f}"),
                gfw=_fmt(r["gflops_wall"]),
                gfc=_fmt(r["gflops_per_core_cpu"]),
                ratio=_fmt(r.get("ratio_cpu_vs_scipy"), "{:.3f}"),
                psg=f"{_fmt(r.get('pct_sgemm_1core_per_core'))}% / {_fmt(r.get('pct_sgemm_probe_wall'))}%",
                gbs=f"{_fmt(r['compulsory_GBps'], '{:.2f}')} ({_fmt(r.get('pct_bandwidth_probe'))}%)",
                eg=_fmt(r["E_gather_equiv_GBps"], "{:.0f}"),
                rss=_fmt(r["peak_rss_bytes"] / 1e9 if r["peak_rss_bytes"] else None, "{:.2f} GB"),
                ld=",".join(f"{x:.1f}" for x in loads) or "–",
                oth=f"{r.get('n_clean', '–')}/{len(r['wall_all'])}; "
                + _fmt(r.get("other_cpu_s_at_min_wall"), "{:.2f}"),
            )
        )
    L.append("")
    L.append("## Gates (docs/performance.md; ratios from this run)")
    L.append("")
    L.append(
        "| d | K1 CPU ratio vs scipy (limit) | K2 fraction of 1-core SGEMM (>= 0.13) | K4 wall 2thr/1thr (<= 0.55) | K5 2-thr wall per 1M / 2-core FMA bound (<= 7.5 fp32) | M1 peak RSS (limit) [kernel's own extra] | max err / row max |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for d, g in res["gates"].items():

        def pf(key, g=g):
            v = g.get(key)
            return "" if v is None else (" ✅" if v else " ❌")

        L.append(
            "| {d} | {k1}{k1l}{k1p} | {k2}{k2p} | {k4}{k4p} | {k5}{k5p} | {m1}{m1p} | {err} |".format(
                d=d,
                k1=_fmt(g.get("K1_ratio"), "{:.3f}"),
                k1l=f" ({g['K1_limit']:.2f})" if "K1_limit" in g else "",
                k1p=pf("K1_pass"),
                k2=_fmt(g.get("K2_fraction_of_1core_sgemm"), "{:.3f}"),
                k2p=pf("K2_pass"),
                k4=_fmt(g.get("K4_wall_ratio"), "{:.3f}"),
                k4p=pf("K4_pass"),
                k5=(
                    f"{g['K5_wall_s_per_1M_cells_2thr']:.1f} s / {g['K5_bound_s_per_1M']:.1f} s = {g['K5_x_bound']:.2f}x"
                    if "K5_x_bound" in g
                    else "–"
                ),
                k5p=pf("K5_pass_fp32"),
                m1=(
                    f"{g['M1_peak_rss_bytes'] / 1e9:.2f} GB ({g['M1_limit_bytes'] / 1e9:.2f} GB)"
                    f" [{g.get('kernel_extra_rss_bytes', 0) / 1e6:.0f} MB]"
                    if "M1_peak_rss_bytes" in g
                    else "–"
                ),
                m1p=pf("M1_pass"),
                err=_fmt(g.get("max_err_rel_to_row_max"), "{:.1e}"),
            )
        )
    L.append("")
    L.append(
        "Notes: peak RSS is per measurement phase (VmHWM reset through /proc/self/clear_refs); it is whole-process"
        " memory (interpreter, numba/LLVM, X, E and C). In the full-matrix rows only the tiled E is held; the"
        " kernel's own extra is the peak minus the RSS just before the timed calls. A run is clean when other"
        " jobs left it the cores it needs (from /proc/stat: their CPU-s < (cores - threads + 0.1) x wall);"
        " minima are over the clean runs when there are any; a row with 0 clean runs was disturbed by load."
        " 'E-gather GB/s' is nnz·d·4 / wall, the E traffic a row-gather kernel would need. Absolute numbers"
        " depend on load; gate on the ratios."
    )
    L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    global EXTRA_REPEATS
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=30_000)
    ap.add_argument("--nnz", type=float, default=2_000, help="target non-zeros per cell")
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 1536])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--extra-repeats",
        type=int,
        default=EXTRA_REPEATS,
        help="more repeats when none was clean (another job used the cores)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="numba thread counts for the full run",
    )
    ap.add_argument(
        "--baseline-cells",
        type=int,
        default=20_000,
        help="cells for the scipy baseline and the K1 ratio",
    )
    ap.add_argument(
        "--width",
        type=int,
        default=None,
        help="kernel column-block width W (default: kernels.DEFAULT_WIDTH)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sgemm-n", type=int, default=4096)
    ap.add_argument("--bandwidth-gib", type=float, default=1.0)
    ap.add_argument("--skip-probes", action="store_true")
    ap.add_argument(
        "--skip-gather", action="store_true", help="do not time the CSR row-gather variant"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--gate", action="store_true", help="exit 1 when K1 fails")
    args = ap.parse_args(argv)

    EXTRA_REPEATS = args.extra_repeats
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aggregation.json").write_text(json.dumps(res, indent=1, default=float))
    md = to_markdown(res)
    (args.out / "aggregation.md").write_text(md)
    print(md)
    if args.gate and not all(g.get("K1_pass", True) for g in res["gates"].values()):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
