"""Fast CPU kernel for ``C = X @ E`` (X: CSR cells x genes, E: genes x d float32).

Design (measured on the project's 2-core Xeon with AVX-512, see
``benchmarks/aggregation.py`` and docs/performance.md):

* ``E`` is re-laid once as ``[d/W][genes][W]`` float32 (:class:`TiledEmbedding`),
  zero-padded so ``d`` is a multiple of ``W``, 64-byte aligned.  A column block
  ``E[:, b*W:(b+1)*W]`` is one contiguous ``genes x W`` slab.
* Rows are processed in chunks of ``CH = 32 KiB / (4 W)`` rows (128 at ``W = 64``),
  in parallel over chunks (numba ``prange``, dynamic scheduling).  Each chunk is
  first transposed into a gene-major list of packed ``(row, value)`` pairs -- a
  counting sort of the chunk's non-zeros, done once per chunk and re-used by every
  column block.
* Then, for every column block, the chunk's ``CH x W`` float32 output tile sits in
  L1; for every gene present in the chunk the ``W`` values of its E row are loaded
  *once* into registers and added, times each of the gene's values, into the tile
  rows that hold the gene.  With 2k nnz/cell over 30k genes a 128-row chunk uses
  each E row ~10 times, so E traffic from L2/L3 drops ~10x compared with the
  classic CSR row-gather kernel (one E row gathered per non-zero and block), which
  is bound by L3 bandwidth on this CPU (~17-20 GFLOP/s/core; kept as
  :func:`csr_matmul_gather`, and used automatically for very sparse rows).
* The inner loops are written in LLVM IR through numba ``@intrinsic``s: explicit
  ``<16 x float>`` vectors, ``llvm.fma`` and software prefetch of E rows.  Plain
  numba loops did not vectorise the fixed-width update (LLVM vectorised the
  non-zero loop with gathers, or kept the accumulators in memory; ~5 GFLOP/s).
* Accumulation is float32; results match a float64 reference to ~3e-6 of the row
  scale and do not depend on the thread count.

Measured (100k cells x 30k genes, 2k nnz/cell, 1 thread, process CPU time):
d=384: 47 CPU-s per 1M cells, 0.21x scipy's ``X @ E``, 32 GFLOP/s = 20% of the
1-core SGEMM probe; d=1536: 176 CPU-s per 1M cells, 0.19-0.20x scipy, 35 GFLOP/s
= 22%.  Two threads: 0.56-0.59x the 1-thread wall time.

numba is imported lazily: importing this module compiles nothing.  The first call
for a given ``W`` / index dtype compiles (a few seconds) and is cached on disk
(``cache=True``); the kernels release the GIL (``nogil=True``) and run on numba's
threads (``numba.set_num_threads``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from scelmo.expression.matrix import (
    PRECISIONS,
    check_float16_range,
    from_bfloat16_bits,
    to_bfloat16_bits,
)

__all__ = [
    "TiledEmbedding",
    "to_bfloat16_bits",
    "from_bfloat16_bits",
    "csr_matmul",
    "csr_matmul_gather",
    "csr_matmul_scatter",
    "csr_matmul_reference",
    "DEFAULT_WIDTH",
    "SUPPORTED_WIDTHS",
]

#: Default column-block width (floats).  64 was the best of 16/32/64/128 at
#: d = 384 and d = 1536 (see benchmarks/aggregation.py).
DEFAULT_WIDTH = 64
#: Widths for which a kernel can be built (multiples of 8 floats).
SUPPORTED_WIDTHS = tuple(range(8, 257, 8))
#: numpy dtype that stores E at each precision (bit patterns: bfloat16 in uint16, float16 in int16).
_STORAGE = {"float32": np.float32, "bfloat16": np.uint16, "float16": np.int16}

_VEC = 16  # lanes per vector op (<16 x float>, one zmm on AVX-512)
_TILE_BYTES = 32 * 1024  # output tile per chunk, sized for L1
_PREFETCH_GENES = 8  # E rows are prefetched this many genes ahead
_ALIGN = 64  # bytes
# non-float32 data is converted to float32 in row slices of at most this many nnz
_CONVERT_NNZ = 1 << 23
# csr_matmul uses the gene-major (scatter) kernel when a row chunk has at least
# this many non-zeros per gene on average, else the row-gather kernel (very sparse
# rows: at 200 nnz/cell of 30k genes gather was 1.4x faster, at 500 they tie, at
# 1000 scatter is 1.3x faster and at 2000 1.7x).
_SCATTER_MIN_NNZ_PER_GENE = 2.0


def _chunk_rows(width: int) -> int:
    return max(16, _TILE_BYTES // (4 * width))


def _stored(E: np.ndarray, precision: str) -> np.ndarray:
    """``E`` as the bits :data:`_STORAGE` keeps for ``precision``."""
    if precision == "bfloat16":
        return to_bfloat16_bits(E)
    if precision == "float16":
        return np.asarray(E, dtype=np.float32).astype(np.float16).view(np.int16)
    return E


def _aligned_empty(shape: tuple[int, ...], dtype=np.float32, align: int = _ALIGN) -> np.ndarray:
    """``np.empty`` whose data pointer is a multiple of ``align`` bytes."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n * dtype.itemsize + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off : off + n * dtype.itemsize].view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------
# TiledEmbedding
# ---------------------------------------------------------------------------------


class TiledEmbedding:
    """``E`` (genes x d) re-laid as ``[d/W][genes][W]``, padded to a multiple of W.

    Attributes: ``data`` (the ``(n_blocks, n_genes, W)`` array, 64-byte aligned:
    float32, or uint16 holding bfloat16 bit patterns), ``n_genes``, ``d`` (the true
    embedding width), ``W`` (block width). The kernels read either; with bfloat16 each
    value is widened to float32 in registers and accumulation stays float32.
    """

    __slots__ = ("data", "n_genes", "d", "W")

    def __init__(self, data: np.ndarray, n_genes: int, d: int, W: int):
        data = np.asarray(data)
        if data.ndim != 3 or data.dtype not in (np.float32, np.uint16, np.int16) or not data.flags.c_contiguous:
            raise ValueError(
                "data must be a C-contiguous float32 (uint16 bfloat16 bits, or int16 float16 bits) array of shape "
                "(n_blocks, n_genes, W)"
            )
        if data.shape[1] != n_genes or data.shape[2] != W:
            raise ValueError(f"data shape {data.shape} does not match n_genes={n_genes}, W={W}")
        if W not in SUPPORTED_WIDTHS:
            raise ValueError(f"W must be a multiple of {_VEC} in [8, 256], got {W}")
        nblk = data.shape[0]
        if not ((nblk - 1) * W < d <= nblk * W or (d == 0 and nblk == 1)):
            raise ValueError(f"d={d} inconsistent with {data.shape[0]} blocks of width {W}")
        self.data = data
        self.n_genes = int(n_genes)
        self.d = int(d)
        self.W = int(W)

    @classmethod
    def from_matrix(cls, E: np.ndarray, *, width: int | None = None, precision: str = "float32") -> TiledEmbedding:
        """Tile a ``(n_genes, d)`` matrix (any real dtype) stored as ``precision``:
        ``"float32"``, ``"bfloat16"`` (half the memory, 8 significant bits; see
        :func:`to_bfloat16_bits`) or ``"float16"`` (half the memory, 11 significant bits,
        values up to 65,504)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        E = np.asarray(E)
        if E.ndim != 2:
            raise ValueError(f"E must be 2-D (genes x d), got shape {E.shape}")
        n_genes, d = E.shape
        if width is None:
            width = min(DEFAULT_WIDTH, max(_VEC, -(-d // _VEC) * _VEC))
        width = int(width)
        if width not in SUPPORTED_WIDTHS:
            raise ValueError(f"width must be a multiple of {_VEC} in [8, 256], got {width}")
        n_blocks = max(1, -(-d // width))
        if precision == "float16":
            check_float16_range(E)
        data = _aligned_empty((n_blocks, n_genes, width), dtype=_STORAGE[precision])
        for b in range(n_blocks):
            c0 = b * width
            c1 = min(d, c0 + width)
            blk = data[b]
            if c1 > c0:
                blk[:, : c1 - c0] = _stored(E[:, c0:c1], precision)
            if c1 - c0 < width:
                blk[:, max(0, c1 - c0) :] = 0
        return cls(data, n_genes, d, width)

    @property
    def precision(self) -> str:
        return {np.dtype(v): k for k, v in _STORAGE.items()}[self.data.dtype]

    @property
    def n_blocks(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_genes, self.d)

    def to_matrix(self) -> np.ndarray:
        """The ``(n_genes, d)`` float32 matrix back."""
        full = self.data.transpose(1, 0, 2).reshape(self.n_genes, -1)[:, : self.d]
        if self.data.dtype == np.uint16:
            return from_bfloat16_bits(full)
        if self.data.dtype == np.int16:
            return full.view(np.float16).astype(np.float32)
        return np.ascontiguousarray(full, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"TiledEmbedding(n_genes={self.n_genes}, d={self.d}, W={self.W}, blocks={self.n_blocks}, "
                f"precision={self.precision!r})")


# ---------------------------------------------------------------------------------
# numba kernels (built lazily, one per block width W)
# ---------------------------------------------------------------------------------

_build_lock = threading.Lock()
_kernels: dict[tuple[str, int], Any] = {}


# The LLVM-IR intrinsics are created lazily (numba is imported on first use) and
# stored as module globals: numba's on-disk cache keys a function on its bytecode
# and closure values, and intrinsic objects do not pickle deterministically, so the
# jitted kernels must reach them as globals, with the block width W passed as a
# compile-time literal.
_nb_prefetch_row = None
_nb_gene_update = None
_nb_row_gather = None


def _literal_width(W_t):
    from numba import types

    if isinstance(W_t, types.IntegerLiteral) and W_t.literal_value in SUPPORTED_WIDTHS:
        return int(W_t.literal_value)
    return None


def _ensure_intrinsics() -> None:
    """Create the LLVM-IR building blocks (requires numba)."""
    global _nb_prefetch_row, _nb_gene_update, _nb_row_gather
    if _nb_gene_update is not None:
        return
    import llvmlite.ir as ir
    from llvmlite.binding import llvm_version_info
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i64 = ir.IntType(64)
    i32 = ir.IntType(32)
    # opaque pointers (LLVM >= 17) mangle the intrinsic as .p0, typed ones as .p0i8
    prefetch_name = "llvm.prefetch.p0" if llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"

    def _vl(W):
        # <16 x float> (one zmm) when W allows, else <8 x float>
        return _VEC if W % _VEC == 0 else 8

    def _vty(W):
        return ir.VectorType(ir.FloatType(), _vl(W))

    def _i64(builder, v):
        return builder.sext(v, i64) if v.type.width < 64 else v

    def _fma(builder, W):
        vty = _vty(W)
        return cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{_vl(W)}f32"
        )

    def _prefetch_lines(builder, base_ptr, W, itemsize=4):
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), prefetch_name
        )
        base = builder.bitcast(base_ptr, i8p)
        for line in range(max(1, (W * itemsize) // 64)):
            p = builder.gep(base, [ir.Constant(i64, 64 * line)])
            builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])

    def _splat(builder, x, W):
        vty = _vty(W)
        undef = ir.Constant(vty, ir.Undefined)
        mask = ir.Constant(ir.VectorType(i32, _vl(W)), [0] * _vl(W))
        return builder.shuffle_vector(
            builder.insert_element(undef, x, ir.Constant(i32, 0)), undef, mask
        )

    def _vptr(builder, base, k, W):
        return builder.bitcast(builder.gep(base, [ir.Constant(i64, k)]), _vty(W).as_pointer())

    def _storage(arr_type):
        """How E's values are stored: ``"f32"``, ``"bf16"`` (uint16 bit patterns) or ``"f16"``
        (IEEE half bit patterns in int16: numba has no float16 arrays)."""
        if arr_type.dtype == types.uint16:
            return "bf16"
        return "f16" if arr_type.dtype == types.int16 else "f32"

    def _load_e(builder, base, k, W, storage):
        """<VL x float> of E at element ``k`` of ``base``, widened exactly: bfloat16 bits are
        zero-extended, shifted left 16 and reinterpreted; halves are ``fpext``-ed (F16C)."""
        if storage == "f32":
            return builder.load(_vptr(builder, base, k, W), align=4)
        VL = _vl(W)
        if storage == "f16":
            ity = ir.VectorType(ir.IntType(16), VL)
            h = builder.load(builder.bitcast(builder.gep(base, [ir.Constant(i64, k)]), ity.as_pointer()), align=2)
            return builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), VL)), _vty(W))
        hty = ir.VectorType(ir.IntType(16), VL)
        h = builder.load(builder.bitcast(builder.gep(base, [ir.Constant(i64, k)]), hty.as_pointer()), align=2)
        wide = builder.shl(builder.zext(h, ir.VectorType(i32, VL)), ir.Constant(ir.VectorType(i32, VL), [16] * VL))
        return builder.bitcast(wide, _vty(W))

    @intrinsic(prefer_literal=True)
    def prefetch_row(typingctx, arr, off, W_t):
        """Prefetch the W floats at ``arr.flat[off:off+W]``."""
        W = _literal_width(W_t)
        if W is None:
            return None
        sig = types.void(arr, off, W_t)

        def codegen(context, builder, signature, args):
            ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
            size = 4 if _storage(signature.args[0]) == "f32" else 2
            _prefetch_lines(builder, builder.gep(ptr, [_i64(builder, args[1])]), W, size)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic(prefer_literal=True)
    def gene_update(typingctx, packed, start, end, Et, eoff, tile, W_t):
        """for p in [start, end): tile[row(p)*W : +W] += val(p) * Et.flat[eoff : eoff+W].

        ``packed[p] = row << 32 | float32 bits of the value``.
        """
        W = _literal_width(W_t)
        if W is None:
            return None
        sig = types.void(packed, start, end, Et, eoff, tile, W_t)

        def codegen(context, builder, signature, args):
            pk_v, start_v, end_v, Et_v, eoff_v, tile_v, _ = args
            VL = _vl(W)
            fma = _fma(builder, W)
            pk_ptr = context.make_array(signature.args[0])(context, builder, pk_v).data
            e_ptr = context.make_array(signature.args[3])(context, builder, Et_v).data
            e_ptr = builder.gep(e_ptr, [_i64(builder, eoff_v)])
            t_ptr = context.make_array(signature.args[5])(context, builder, tile_v).data
            # the gene's W values of E stay in registers for all its rows
            storage = _storage(signature.args[3])
            es = [_load_e(builder, e_ptr, q * VL, W, storage) for q in range(W // VL)]
            cW = ir.Constant(i64, W)
            with cgutils.for_range_slice(
                builder, _i64(builder, start_v), _i64(builder, end_v), ir.Constant(i64, 1)
            ) as (p, _):
                pk = builder.load(builder.gep(pk_ptr, [p]))
                r = builder.lshr(pk, ir.Constant(i64, 32))
                v = builder.bitcast(builder.trunc(pk, i32), ir.FloatType())
                vv = _splat(builder, v, W)
                trow = builder.gep(t_ptr, [builder.mul(r, cW)])
                for q in range(W // VL):
                    tp = _vptr(builder, trow, q * VL, W)
                    acc = builder.load(tp, align=4)
                    builder.store(builder.call(fma, [vv, es[q], acc]), tp, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic(prefer_literal=True)
    def row_gather(typingctx, indices, data, start, end, Et, eoff, dst, doff, W_t):
        """dst.flat[doff:doff+W] = sum_j data[j] * Et.flat[eoff + indices[j]*W : +W], j in [start, end).

        Register accumulators; the E row of the non-zero 8 ahead is prefetched
        (the CSR row-gather kernel; indices must be in range).
        """
        W = _literal_width(W_t)
        if W is None:
            return None
        sig = types.void(indices, data, start, end, Et, eoff, dst, doff, W_t)

        def codegen(context, builder, signature, args):
            idx_v, dat_v, start_v, end_v, Et_v, eoff_v, dst_v, doff_v, _ = args
            storage = _storage(signature.args[4])
            VL = _vl(W)
            vty = _vty(W)
            fma = _fma(builder, W)
            idx_ptr = context.make_array(signature.args[0])(context, builder, idx_v).data
            dat_ptr = context.make_array(signature.args[1])(context, builder, dat_v).data
            e_ptr = context.make_array(signature.args[4])(context, builder, Et_v).data
            e_ptr = builder.gep(e_ptr, [_i64(builder, eoff_v)])
            d_ptr = context.make_array(signature.args[6])(context, builder, dst_v).data
            d_ptr = builder.gep(d_ptr, [_i64(builder, doff_v)])
            start_v = _i64(builder, start_v)
            end_v = _i64(builder, end_v)
            last = builder.sub(end_v, ir.Constant(i64, 1))
            cW = ir.Constant(i64, W)
            accs = [
                cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * VL))
                for _ in range(W // VL)
            ]
            with cgutils.for_range_slice(builder, start_v, end_v, ir.Constant(i64, 1)) as (j, _):
                g = _i64(builder, builder.load(builder.gep(idx_ptr, [j])))
                vv = _splat(builder, builder.load(builder.gep(dat_ptr, [j])), W)
                row = builder.gep(e_ptr, [builder.mul(g, cW)])
                for q in range(W // VL):
                    e = _load_e(builder, row, q * VL, W, storage)
                    builder.store(builder.call(fma, [vv, e, builder.load(accs[q])]), accs[q])
                jp = builder.add(j, ir.Constant(i64, 8))
                jp = builder.select(builder.icmp_signed("<", jp, end_v), jp, last)
                gp = _i64(builder, builder.load(builder.gep(idx_ptr, [jp])))
                _prefetch_lines(builder, builder.gep(e_ptr, [builder.mul(gp, cW)]), W, 4 if storage == "f32" else 2)
            for q in range(W // VL):
                builder.store(builder.load(accs[q]), _vptr(builder, d_ptr, q * VL, W), align=4)
            return context.get_dummy_value()

        return sig, codegen

    _nb_prefetch_row, _nb_row_gather = prefetch_row, row_gather
    _nb_gene_update = gene_update  # set last: marks the set as complete


def _build_scatter(W: int):
    import numba as nb

    _ensure_intrinsics()
    CH = _chunk_rows(W)
    PG = _PREFETCH_GENES

    @nb.njit(parallel=True, nogil=True, cache=True)
    def spmm_scatter(indptr, indices, databits, Et, out, bad, nthr):  # pragma: no cover - numba
        # nthr = numba.get_num_threads() of the caller (calling it here would
        # make the function uncacheable)
        nblk, G, _w = Et.shape
        n = indptr.shape[0] - 1
        d = out.shape[1]
        nch = (n + CH - 1) // CH
        maxnz = 0
        for c in range(nch):
            r0 = c * CH
            r1 = min(n, r0 + CH)
            z = indptr[r1] - indptr[r0]
            if z > maxnz:
                maxnz = z
        # per-thread scratch (allocated once per call, indexed by thread id)
        ws_pos = np.empty((nthr, G + 1), np.int32)
        ws_sg = np.empty((nthr, G + PG), np.int32)
        ws_sp = np.empty((nthr, G + 1), np.int32)
        ws_pk = np.empty((nthr, max(maxnz, 1)), np.uint64)
        ws_tile = np.empty((nthr, CH * W + 16), np.float32)
        for c in nb.prange(nch):
            tid = nb.get_thread_id()
            pos = ws_pos[tid]
            seg_g = ws_sg[tid]
            seg_p = ws_sp[tid]
            packed = ws_pk[tid]
            tbuf = ws_tile[tid]
            toff = ((-tbuf.ctypes.data) % 64) // 4
            tile = tbuf[toff : toff + CH * W]
            r0 = c * CH
            r1 = min(n, r0 + CH)
            nr = r1 - r0
            # --- counting sort of the chunk's non-zeros by gene
            pos[:] = 0
            for j in range(indptr[r0], indptr[r1]):
                g = indices[j]
                if g >= 0 and g < G:
                    pos[g + 1] += 1
                else:
                    bad[0] = 1
            nseg = 0
            acc = 0
            for g in range(G):
                k = pos[g + 1]
                if k != 0:
                    seg_g[nseg] = g
                    seg_p[nseg] = acc
                    nseg += 1
                pos[g] = acc
                acc += k
            seg_p[nseg] = acc
            last = seg_g[nseg - 1] if nseg > 0 else 0
            for q in range(PG):
                seg_g[nseg + q] = last
            for r in range(r0, r1):
                rr = r - r0
                for j in range(indptr[r], indptr[r + 1]):
                    g = indices[j]
                    if g >= 0 and g < G:
                        p = pos[g]
                        packed[p] = (np.uint64(rr) << np.uint64(32)) | np.uint64(databits[j])
                        pos[g] = p + 1
            # --- column blocks: tile[CH, W] += vals * E rows, gene by gene
            for b in range(nblk):
                tile[: nr * W] = 0.0
                eb = b * G * W
                for i in range(nseg):
                    _nb_prefetch_row(Et, eb + seg_g[i + PG] * W, W)
                    _nb_gene_update(packed, seg_p[i], seg_p[i + 1], Et, eb + seg_g[i] * W, tile, W)
                c0 = b * W
                wv = min(W, d - c0)
                for rr in range(nr):
                    o = out[r0 + rr]
                    t0 = rr * W
                    for k in range(wv):
                        o[c0 + k] = tile[t0 + k]

    return spmm_scatter


def _build_gather(W: int):
    import numba as nb

    _ensure_intrinsics()
    CH = 256

    @nb.njit(parallel=True, nogil=True, cache=True)
    def spmm_gather(indptr, indices, data, Et, out, bad, nthr):  # pragma: no cover - numba
        nblk, G, _w = Et.shape
        n = indptr.shape[0] - 1
        d = out.shape[1]
        nch = (n + CH - 1) // CH
        # indices must be in range for the gather kernel: check once
        for c in nb.prange(nch):
            for j in range(indptr[c * CH], indptr[min(n, c * CH + CH)]):
                g = indices[j]
                if g < 0 or g >= G:
                    bad[0] = 1
        if bad[0] != 0:
            return
        ws = np.empty((nthr, W), np.float32)
        flat = out.reshape(-1)
        for b in range(nblk):
            c0 = b * W
            wv = min(W, d - c0)
            eb = b * G * W
            for c in nb.prange(nch):
                tmp = ws[nb.get_thread_id()]
                for r in range(c * CH, min(n, c * CH + CH)):
                    if wv == W:
                        _nb_row_gather(
                            indices, data, indptr[r], indptr[r + 1], Et, eb, flat, r * d + c0, W
                        )
                    else:
                        _nb_row_gather(indices, data, indptr[r], indptr[r + 1], Et, eb, tmp, 0, W)
                        for k in range(wv):
                            out[r, c0 + k] = tmp[k]

    return spmm_gather


def _get_kernel(kind: str, W: int):
    key = (kind, W)
    k = _kernels.get(key)
    if k is None:
        with _build_lock:
            k = _kernels.get(key)
            if k is None:
                k = (_build_scatter if kind == "scatter" else _build_gather)(W)
                _kernels[key] = k
    return k


# ---------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------


def _as_index(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D")
    if a.dtype == np.int32 or a.dtype == np.int64:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _vals(kind: str, data: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.float32)
    # the scatter kernel packs the value's bits next to the row id
    return data.view(np.uint32) if kind == "scatter" else data


def _run(kind: str, indptr, indices, data, tiled, out) -> np.ndarray:
    if isinstance(tiled, np.ndarray):
        tiled = TiledEmbedding.from_matrix(tiled)
    if not isinstance(tiled, TiledEmbedding):
        raise TypeError("tiled must be a TiledEmbedding (or a genes x d ndarray)")
    indptr = np.asarray(indptr)
    if indptr.ndim != 1 or indptr.shape[0] < 1:
        raise ValueError("indptr must be 1-D with n_rows + 1 entries")
    if indptr.dtype.kind not in "iu":
        raise TypeError(f"indptr must be an integer array, got {indptr.dtype}")
    indices = _as_index(indices, "indices")
    data = np.asarray(data)
    if data.ndim != 1 or data.shape[0] != indices.shape[0]:
        raise ValueError("data and indices must be 1-D arrays of the same length")
    if data.dtype.kind not in "biuf":
        raise TypeError(f"data must be real numbers, got {data.dtype}")
    n = int(indptr.shape[0]) - 1
    d = tiled.d
    if out is None:
        out = np.empty((n, d), dtype=np.float32)
    else:
        if out.shape != (n, d) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, d)}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
    if n == 0 or d == 0:
        return out
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    if int(indptr[-1]) > indices.shape[0] or int(indptr[0]) < 0:
        raise ValueError("indptr is inconsistent with indices/data")
    nnz = int(indptr[-1]) - int(indptr[0])
    if nnz == 0:
        out.fill(0.0)
        return out
    if kind == "auto":
        per_gene = nnz / n * min(n, _chunk_rows(tiled.W)) / max(1, tiled.n_genes)
        kind = "scatter" if per_gene >= _SCATTER_MIN_NNZ_PER_GENE else "gather"
    kernel = _get_kernel(kind, tiled.W)
    bad = np.zeros(1, dtype=np.int64)

    import numba

    nthr = np.int64(numba.get_num_threads())

    prev = numba.get_parallel_chunksize() if hasattr(numba, "get_parallel_chunksize") else None
    if prev is not None:
        numba.set_parallel_chunksize(1)  # dynamic scheduling of row chunks
    try:
        if data.dtype == np.float32:
            kernel(indptr, indices, _vals(kind, data), tiled.data, out, bad, nthr)
        else:
            # convert the values per row slice (bounded temporary), rows stay CSR
            r0 = 0
            while r0 < n:
                j0 = int(indptr[r0])
                r1 = int(np.searchsorted(indptr, j0 + _CONVERT_NNZ, side="right")) - 1
                r1 = min(n, max(r1, r0 + 1))
                j1 = int(indptr[r1])
                sub_ptr = indptr[r0 : r1 + 1] - j0
                kernel(
                    sub_ptr,
                    indices[j0:j1],
                    _vals(kind, data[j0:j1].astype(np.float32)),
                    tiled.data,
                    out[r0:r1],
                    bad,
                    nthr,
                )
                r0 = r1
    finally:
        if prev is not None:
            numba.set_parallel_chunksize(prev)
    if bad[0]:
        raise IndexError(f"column index out of range for an embedding with {tiled.n_genes} genes")
    return out


def csr_matmul(
    indptr, indices, data, tiled: TiledEmbedding, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Return (n_rows, d) float32 = X @ E, fp32 accumulation, no densification of X.

    ``indptr``/``indices``/``data`` are the CSR arrays of X (``indices`` int32 or
    int64; ``indptr`` any integer dtype; ``data`` float32, or float64/float16/
    integer/bool converted to float32 in bounded row slices).  Column indices may
    be unsorted and may repeat (repeats are summed, as in scipy).  ``tiled`` is a
    :class:`TiledEmbedding` of E (genes x d).  ``out``, if given, must be a
    C-contiguous float32 ``(n_rows, d)`` array and is overwritten.

    Runs on numba's threads (``numba.set_num_threads``) and releases the GIL.
    Raises ``IndexError`` for a column index outside ``[0, tiled.n_genes)``.

    Uses the gene-major kernel (see the module docstring) unless the rows are so
    sparse that a 128-row chunk has < 2 non-zeros per gene on average; then the
    CSR row-gather kernel (:func:`csr_matmul_gather`) is faster and is used.
    """
    return _run("auto", indptr, indices, data, tiled, out)


def csr_matmul_scatter(
    indptr, indices, data, tiled: TiledEmbedding, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Same as :func:`csr_matmul`, always with the gene-major (scatter) kernel."""
    return _run("scatter", indptr, indices, data, tiled, out)


def csr_matmul_gather(
    indptr, indices, data, tiled: TiledEmbedding, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Same as :func:`csr_matmul` with the CSR row-gather kernel (register
    accumulators, one E row gathered per non-zero and column block).

    Kept for benchmarking: it is bound by L2/L3 bandwidth and ~1.5-2x slower than
    :func:`csr_matmul` on the section-2 data.
    """
    return _run("gather", indptr, indices, data, tiled, out)


def csr_matmul_reference(X_csr, E) -> np.ndarray:
    """plain scipy X @ E (baseline)"""
    import scipy.sparse as sp

    if not sp.issparse(X_csr):
        X_csr = sp.csr_matrix(X_csr)
    return np.asarray(X_csr @ E)
