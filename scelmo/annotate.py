"""Zero-shot cell-type annotation: kNN label transfer and text-prompt matching.

Exposed as :func:`scelmo.tl.annotate`.

* **Reference transfer** (the paper's zero-shot annotation): each query cell takes the
  majority label of its ``k`` (default 10) nearest reference cells by cosine distance
  on the scelmo embedding. Score = fraction of those neighbours that carry the label.
* **Text prompts**: the cell-type names the user lists (or texts describing them) are
  embedded with the same text embedder as the genes, and each cell gets the type whose
  vector is most similar to its own. Both sets are centred on their own mean before the
  cosine (scelmo vectors are anisotropic: any two gene texts have cosine ~0.7-0.8, so
  raw cosines mostly measure that shared direction). Score = softmax probability of the
  chosen type over the candidates at ``temperature``.

Cells whose score is below ``min_score`` are labelled ``unknown_label``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import keys, provenance
from .errors import InputError, ScelmoError


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def knn_vote(
    query: np.ndarray, ref: np.ndarray, labels: np.ndarray, *, k: int = 10, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label among the ``k`` cosine-nearest reference rows, and its vote share."""
    if ref.shape[0] == 0:
        raise InputError("The reference has no cells.")
    k = min(k, ref.shape[0])
    cats, codes = np.unique(labels.astype(str), return_inverse=True)
    R = _unit(np.asarray(ref, dtype=np.float32))
    Q = _unit(np.asarray(query, dtype=np.float32))
    out = np.empty(Q.shape[0], dtype=np.int64)
    score = np.empty(Q.shape[0], dtype=np.float32)
    for s in range(0, Q.shape[0], chunk):
        sims = Q[s : s + chunk] @ R.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.zeros((nn.shape[0], len(cats)), dtype=np.int32)
        np.add.at(votes, (np.repeat(np.arange(nn.shape[0]), k), codes[nn].ravel()), 1)
        # ties: the label of the nearest neighbour among the tied ones
        best = votes.max(axis=1, keepdims=True)
        order = np.argsort(-np.take_along_axis(sims, nn, axis=1), axis=1)
        nn_sorted = np.take_along_axis(nn, order, axis=1)
        tied = votes == best
        pick = np.empty(nn.shape[0], dtype=np.int64)
        for i in range(nn.shape[0]):
            for j in nn_sorted[i]:
                if tied[i, codes[j]]:
                    pick[i] = codes[j]
                    break
        out[s : s + chunk] = pick
        score[s : s + chunk] = best.ravel() / k
    return cats[out], score


def prompt_match(
    cells: np.ndarray, type_vectors: np.ndarray, names: Sequence[str], *, temperature: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-matching cell type per cell, its softmax score, and the full similarity matrix."""
    C = _unit(cells - cells.mean(axis=0, keepdims=True))
    T = type_vectors - (type_vectors.mean(axis=0, keepdims=True) if len(names) > 1 else 0)
    T = _unit(T)
    sims = C @ T.T
    z = (sims - sims.max(axis=1, keepdims=True)) / temperature
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    best = sims.argmax(axis=1)
    return np.asarray(names, dtype=object)[best], p[np.arange(len(best)), best].astype(np.float32), sims


def annotate(
    adata: Any,
    *,
    reference: Any = None,
    ref_labels: str | Sequence[Any] | None = None,
    cell_types: Sequence[str] | Mapping[str, str] | None = None,
    describe_cell_types: bool = False,
    k: int = 10,
    use_rep: str = keys.X_SCELMO,
    min_score: float = 0.0,
    unknown_label: str = "unknown",
    temperature: float = 0.05,
    config: Any = None,
    key_added: str = keys.LABEL,
    progress: bool | None = None,
) -> None:
    """Annotate cell types with no training.

    Parameters
    ----------
    adata
        Query cells. ``adata.obsm[use_rep]`` is computed with
        :func:`scelmo.tl.embed_cells` (same ``config``) if missing.
    reference, ref_labels
        Labelled reference AnnData and its labels (an ``obs`` column name or an array):
        kNN label transfer. Reference embeddings are computed if missing.
    cell_types
        Candidate cell types for text-prompt annotation: a list of names, or a mapping
        ``name -> description`` whose descriptions are embedded instead of the names.
        Only these types can be assigned.
    describe_cell_types
        Have the ``describe`` role's LLM write a description of each listed name (prompt
        ``cell-type``, cached like gene descriptions; see :func:`scelmo.describe`) and
        embed the descriptions instead of the bare names.
    k
        Neighbours for the reference vote (10, as in the paper).
    min_score
        Cells scoring below this get ``unknown_label`` (default 0: never).
    temperature
        Softmax temperature turning prompt similarities into scores.
    key_added
        ``obs`` column for labels; scores go to ``obs[key_added + "_score"]``.

    Returns
    -------
    ``None``. Sets ``adata.obs[key_added]`` (categorical), ``adata.obs[key_added + "_score"]``
    and ``adata.uns["scelmo"]["annotate"]``.
    """
    from .tl import embed_cells

    if (reference is None) == (cell_types is None):
        raise InputError("Pass either `reference` (with `ref_labels`) or `cell_types`, not both or neither.")
    if use_rep not in adata.obsm:
        embed_cells(adata, config=config, key_added=use_rep, progress=progress)
    query = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    info: dict[str, Any] = {"use_rep": use_rep, "min_score": min_score}
    if reference is not None:
        if ref_labels is None:
            raise InputError("`ref_labels` is required with `reference` (an obs column name or an array).")
        if isinstance(ref_labels, str):
            if ref_labels not in reference.obs:
                raise InputError(f"Column {ref_labels!r} not found in reference.obs.")
            labels = reference.obs[ref_labels].to_numpy()
        else:
            labels = np.asarray(ref_labels)
        if len(labels) != reference.n_obs:
            raise InputError(f"ref_labels has {len(labels)} entries but the reference has {reference.n_obs} cells.")
        if use_rep not in reference.obsm:
            embed_cells(reference, config=config, key_added=use_rep, progress=progress)
        ref = np.asarray(reference.obsm[use_rep], dtype=np.float32)
        if ref.shape[1] != query.shape[1]:
            raise InputError(
                f"Query ({query.shape[1]}-d) and reference ({ref.shape[1]}-d) embeddings differ in width; "
                "embed both with the same gene embeddings."
            )
        keep = ~_is_missing(labels)
        pred, score = knn_vote(query, ref[keep], labels[keep], k=k)
        info.update({"method": "knn_transfer", "k": k, "n_reference": int(keep.sum())})
    else:
        names, texts = _cell_type_texts(cell_types)
        if describe_cell_types and not isinstance(cell_types, Mapping):
            from .descriptions import describe

            described = describe(names, subject="cell_type", config=config, progress=progress)
            texts = [described.texts.get(n, n) for n in names]  # failures fall back to the name
            info["cell_type_descriptions"] = described.provenance()
        vectors = _embed_texts(texts, config, progress)
        if vectors.shape[1] != query.shape[1]:
            raise ScelmoError(
                f"Cell-type text vectors are {vectors.shape[1]}-d but adata.obsm[{use_rep!r}] is "
                f"{query.shape[1]}-d: annotate with the same embedder that made the cell embedding."
            )
        pred, score, _ = prompt_match(query, vectors, names, temperature=temperature)
        info.update({"method": "text_prompt", "n_cell_types": len(names), "temperature": temperature})
    pred = pred.astype(object)
    pred[score < min_score] = unknown_label
    import pandas as pd

    adata.obs[key_added] = pd.Categorical(pred.astype(str))
    adata.obs[f"{key_added}_score"] = score
    info["n_unknown"] = int((pred == unknown_label).sum())
    provenance.record(adata, "annotate", info)


def _is_missing(labels: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.isna(labels) | (labels.astype(str) == "")


def _cell_type_texts(cell_types: Sequence[str] | Mapping[str, str]) -> tuple[list[str], list[str]]:
    if isinstance(cell_types, str):
        raise InputError("`cell_types` must be a list of names (or a name -> description mapping), not a string.")
    if isinstance(cell_types, Mapping):
        names, texts = [str(n) for n in cell_types], [str(t) for t in cell_types.values()]
    else:
        names = [str(n) for n in cell_types]
        texts = names
    if len(names) < 2:
        raise InputError("List at least two candidate cell types.")
    if len(set(names)) != len(names):
        raise InputError("Candidate cell types must be unique.")
    return names, texts


def _embed_texts(texts: list[str], config: Any, progress: bool | None) -> np.ndarray:
    from . import roles
    from .config import get_settings

    return roles.embed_texts(get_settings(config), texts, progress=progress, desc="embedding cell-type texts")
