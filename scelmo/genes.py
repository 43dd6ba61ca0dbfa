"""Gene vocabulary (name resolution) and :class:`GeneEmbeddings` (genes x d + manifest).

:class:`GeneVocabulary` maps whatever the data uses as gene names to current human
symbols: symbols in any case, aliases and previous symbols, human and mouse Ensembl
IDs (with or without a version suffix) and mouse symbols through orthologs. The
tables come from a knowledge source (the bundled one is ``scelmo_local``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scelmo.conditioning import DEFAULT_COMPONENTS, Conditioning
from scelmo.errors import InputError, IntegrityError, ScelmoWarning
from scelmo.io import atomic_dir, sha256_file

#: An Ensembl gene ID, with an optional version and GENCODE's ``_PAR_Y`` (the Y copy of a
#: pseudoautosomal gene: the same gene as its X copy).
_ENSEMBL = re.compile(r"^(ENS(?:MUS)?G\d{11})(?:\.\d+)?(?:_PAR_Y)?$", re.IGNORECASE)
# a copy made unique by anndata's var_names_make_unique ("APP-1") or R's make.unique ("APP.1")
_COPY_SUFFIX = re.compile(r"^(.+)[-.]\d+$")
Species = Literal["auto", "human", "mouse"]


@dataclass
class Resolution:
    """Result of :meth:`GeneVocabulary.resolve`: one entry per input name."""

    names: list[str]
    symbols: list[str | None]
    how: list[str]
    species: str

    @property
    def n_resolved(self) -> int:
        return sum(s is not None for s in self.symbols)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.how))


class GeneVocabulary:
    """Maps gene names and IDs to canonical (current, human) gene symbols.

    Parameters
    ----------
    symbols
        Canonical symbols.
    aliases
        Alias or previous symbol -> canonical symbol. Aliases shared by several
        genes, or equal to another gene's current symbol, are dropped as ambiguous.
    ensembl
        Human or mouse Ensembl gene ID (no version) -> canonical symbol. When an ID is
        given for several genes, the first pair wins: list primary IDs first.
    mouse
        Mouse symbol -> human ortholog's canonical symbol.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        aliases: Iterable[tuple[str, str]] = (),
        ensembl: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        mouse: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        full_names: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> None:
        self.symbols: dict[str, str] = {s.upper(): s for s in symbols}
        alias_targets: dict[str, set[str]] = {}
        for alias, symbol in aliases:
            a = alias.upper()
            if a and a not in self.symbols and symbol.upper() in self.symbols:
                alias_targets.setdefault(a, set()).add(self.symbols[symbol.upper()])
        self.aliases = {a: next(iter(t)) for a, t in alias_targets.items() if len(t) == 1}
        #: Aliases shared by several genes -> all of them (never used to resolve a gene name).
        self.ambiguous_aliases = {a: tuple(sorted(t)) for a, t in alias_targets.items() if len(t) > 1}
        self.n_ambiguous_aliases = len(self.ambiguous_aliases)
        items = ensembl.items() if isinstance(ensembl, Mapping) else ensembl
        self.ensembl: dict[str, str] = {}
        for gid, symbol in items:  # an ID listed for several genes: the first pair wins
            self.ensembl.setdefault(gid.upper(), symbol)
        items = mouse.items() if isinstance(mouse, Mapping) else mouse
        self.mouse = {k.upper(): v for k, v in items}
        items = full_names.items() if isinstance(full_names, Mapping) else full_names
        named: dict[str, set[str]] = {}
        for full, symbol in items:
            key = _words_key(full)
            if key and symbol.upper() in self.symbols:
                named.setdefault(key, set()).add(self.symbols[symbol.upper()])
        #: A gene's full name, as lower-case words ("pancreatic polypeptide") -> its symbol
        #: (names shared by several genes are left out).
        self.full_names = {k: next(iter(v)) for k, v in named.items() if len(v) == 1}
        self._longest_full_name = max((k.count(" ") + 1 for k in self.full_names), default=0)

    def genes_named_in(self, text: str) -> list[str]:
        """Symbols of the genes whose full names ``text`` spells out as whole words
        ("glucagon-producing cell" -> GCG, "pancreatic polypeptide cell" -> PPY), longest
        names first, without overlaps; not those it negates ("insulin-negative",
        "non-insulin-producing", "desmin- cell")."""
        low = str(text).lower()
        found_words = list(re.finditer(r"[a-z0-9]+", low))
        words = [m.group() for m in found_words]
        found: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._longest_full_name, len(words) - i), 0, -1):
                sym = self.full_names.get(" ".join(words[i : i + n]))
                if sym is None:
                    continue
                end = found_words[i + n - 1].end()
                after = words[i + n] if i + n < len(words) else ""
                dangling = low[end : end + 1] == "-" and not low[end + 1 : end + 2].isalnum()  # "desmin- cell"
                if not (after in _NEGATING_AFTER or (i and words[i - 1] in _NEGATING_BEFORE) or dangling):
                    found.append(sym)
                i += n
                break
            else:
                i += 1
        return list(dict.fromkeys(found))

    def candidates(self, name: str) -> tuple[str, ...]:
        """Every canonical symbol ``name`` may denote: itself, its alias target(s) (all genes
        sharing an ambiguous alias, e.g. CD16 -> FCGR3A, FCGR3B) or its human ortholog."""
        key = str(name).strip().upper()
        if key in self.symbols:
            return (self.symbols[key],)
        if key in self.aliases:
            return (self.aliases[key],)
        if key in self.ambiguous_aliases:
            return self.ambiguous_aliases[key]
        if key in self.mouse:
            return (self.mouse[key],)
        return ()

    def __len__(self) -> int:
        return len(self.symbols)

    @staticmethod
    def guess_species(names: Sequence[str]) -> str:
        """``"mouse"`` when most names look like mouse symbols (``Cd3e``) or IDs (ENSMUSG)."""
        names = [str(n) for n in names[:5000]]
        if not names:
            return "human"
        # one vote per name: an ID or the symbol's case (a single ENSG among 765 mouse
        # symbols used to make the whole list human)
        mouse_ids = sum(n.upper().startswith("ENSMUSG") for n in names)
        human_ids = sum(n.upper().startswith("ENSG") for n in names)
        capitalised = sum(len(n) > 1 and n[0].isupper() and any(c.islower() for c in n[1:]) for n in names)
        upper = sum(n.isupper() and not n.upper().startswith("ENS") for n in names)
        return "mouse" if mouse_ids + capitalised > human_ids + upper else "human"

    def resolve(self, names: Sequence[str], *, species: Species = "auto") -> Resolution:
        """Canonical symbol for each name (``None`` when unknown), and how it was found."""
        names = [str(n) for n in names]
        sp_ = self.guess_species(names) if species == "auto" else species
        symbols: list[str | None] = []
        how: list[str] = []
        present = {n.strip().upper() for n in names}
        for name in names:
            sym, why = self._resolve_one(name.strip(), sp_, present)
            if why == "unknown" and "." in name:
                # R's make.names (read.csv, as.data.frame) writes "-" as ".": H2.K1, HLA.DRA. Not
                # through an alias: "APP.1" (make.unique's copy of APP, APP itself filtered out)
                # would become "APP-1", an alias of PABPC4
                dashed, how_dashed = self._resolve_one(name.strip().replace(".", "-"), sp_, present)
                if dashed is not None and how_dashed != "alias":
                    sym, why = dashed, "r_make_names"
            symbols.append(sym)
            how.append(why)
        return Resolution(names=names, symbols=symbols, how=how, species=sp_)

    def _resolve_one(self, name: str, species: str, present: frozenset[str] | set[str] = frozenset()) -> tuple[str | None, str]:
        m = _ENSEMBL.match(name)
        if m:
            gid = m.group(1).upper()
            sym = self.ensembl.get(gid)
            return (sym, "ensembl") if sym else (None, "unknown_ensembl")
        key = name.upper()
        if key in _MISSING_NAMES:  # what `var["symbol"].astype(str)` leaves for a missing symbol
            return None, "missing_name"
        copy = _COPY_SUFFIX.match(key)
        if copy and copy.group(1) in present and key not in self.symbols and key not in self.mouse:
            # "APP-1" beside "APP" is a second copy of APP, not the gene whose alias it happens
            # to be (PABPC4): it gets no vector rather than another gene's
            return None, "duplicate_copy"
        mito = _HUMAN_MITO.get(key)
        if mito is not None and mito in self.symbols:  # MT-CO2 is the table's COX2 (its alias is a pseudogene's)
            return self.symbols[mito], "mitochondrial"
        if species == "mouse":
            if key in self.mouse and key in self.symbols and self.symbols[key] != self.mouse[key]:
                # a human gene of the same name: the ortholog table's pick by resource count made
                # Cxcl1 CXCL2, Ifit1 IFIT1B and Klrc2 KLRC1 though CXCL1, IFIT1, KLRC2 exist
                return self.symbols[key], "symbol_uppercase"
            if key in self.mouse:
                return self.mouse[key], "mouse_ortholog"
            if key in self.symbols:
                return self.symbols[key], "symbol_uppercase"
            if key in self.aliases:
                return self.aliases[key], "alias"
            return None, "unknown"
        if key in self.symbols:
            return self.symbols[key], "symbol"
        if key in self.aliases:
            return self.aliases[key], "alias"
        if key in self.mouse:
            return self.mouse[key], "mouse_ortholog"
        return None, "unknown"


_NEGATING_AFTER = frozenset({"negative", "neg", "low", "lo", "deficient", "null"})
_NEGATING_BEFORE = frozenset({"non", "not", "no", "without"})


def _words_key(text: str) -> str:
    """Lower-case words of ``text`` joined by single spaces ("Interferon-gamma" -> "interferon gamma")."""
    return " ".join(re.findall(r"[a-z0-9]+", str(text).lower()))


#: Human mitochondrial genes by their HGNC names, as the knowledge table keys them.
_HUMAN_MITO = {f"MT-{g}": g for g in ("ND1", "ND2", "ND3", "ND4", "ND4L", "ND5", "ND6", "ATP6", "ATP8")} | {
    "MT-CO1": "COX1", "MT-CO2": "COX2", "MT-CO3": "COX3", "MT-CYB": "CYTB"}

#: Placeholders for a missing gene name; some are aliases of real genes (NA -> XK), so they
#: are never looked up.
_MISSING_NAMES = frozenset({"", "NAN", "NA", "N/A", "<NA>", "NONE", "NULL"})


# --------------------------------------------------------------------------- embeddings
@dataclass
class GeneEmbeddings:
    """A genes x d matrix of gene vectors with its manifest.

    Attributes
    ----------
    genes
        Canonical gene symbols, one per row (unique).
    vectors
        float32 array, ``(len(genes), d)``.
    manifest
        Provenance: models, knowledge-source version, prompt hash, dimensions...
        (strings and numbers only).
    conditioning
        The :class:`~scelmo.conditioning.Conditioning` fitted on this table (see
        :meth:`condition`), or ``None``. ``vectors`` always hold the raw vectors; the
        conditioned ones come from :meth:`aligned` with ``conditioned=True``.
    """

    genes: list[str]
    vectors: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    conditioning: Conditioning | None = None

    def __post_init__(self) -> None:
        self.genes = [str(g) for g in self.genes]
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.genes):
            raise InputError(
                f"GeneEmbeddings needs one vector per gene: got {len(self.genes)} genes and an "
                f"array of shape {self.vectors.shape}."
            )
        dup = [g for g, c in Counter(self.genes).items() if c > 1]
        if dup:
            raise InputError(f"GeneEmbeddings has duplicate genes: {dup[:5]}.")
        self._index = {g.upper(): i for i, g in enumerate(self.genes)}

    def __len__(self) -> int:
        return len(self.genes)

    def __contains__(self, gene: str) -> bool:
        return gene.upper() in self._index

    def keys_for(self, names: Sequence[str], symbols: Sequence[str | None]) -> list[str]:
        """The key to look each of ``names`` up by: its resolved symbol (``symbols``, e.g.
        :meth:`GeneVocabulary.resolve`'s) when the table has it, else the name as given (a
        user's table may be keyed by other names)."""
        return [s if (s is not None and s in self) else str(n) for s, n in zip(symbols, names, strict=True)]

    def __repr__(self) -> str:
        model = self.manifest.get("embed_model", "?")
        return f"GeneEmbeddings({len(self)} genes x {self.dim}, embed_model={model!r})"

    def models(self) -> dict[str, str]:
        """``{"embed_model", "describe_model"}`` as the manifest records them
        (``"user-provided"`` for a table built by hand), for provenance and comparisons."""
        return {f: (self.manifest or {}).get(f, "user-provided") for f in ("embed_model", "describe_model")}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def aligned(self, symbols: Sequence[str | None], *, conditioned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Matrix with one row per entry of ``symbols`` (zero rows where absent) and the mask.

        With ``conditioned=True`` the rows are the conditioned vectors (fitting the
        table's conditioning first if it has none, see :meth:`condition`).
        """
        idx = np.array([self._index.get(s.upper(), -1) if s else -1 for s in symbols], dtype=np.int64)
        mask = idx >= 0
        out = np.zeros((len(symbols), self.dim), dtype=np.float32)
        out[mask] = self.vectors[idx[mask]]
        if conditioned:
            cond = self.conditioning if self.conditioning is not None else self.condition().conditioning
            out[mask] = cond.apply(out[mask])  # type: ignore[union-attr]
        return out, mask

    def condition(self, *, n_components: int | None = None, refit: bool = False) -> GeneEmbeddings:
        """Fit the table's :class:`~scelmo.conditioning.Conditioning` (in place) and return ``self``.

        Centres the vectors and removes their top ``n_components`` principal directions
        (default :data:`scelmo.conditioning.DEFAULT_COMPONENTS`; at most one per 20 gene
        vectors, so a small table keeps most of its structure). Fitting depends only on
        the table, so it is done once and kept: a table that already has a conditioning
        keeps it unless ``refit=True`` or a different ``n_components`` is asked for.
        """
        k = self._components_for(n_components)
        if n_components is not None and k < int(n_components):
            warnings.warn(
                f"Conditioning removes {k} direction(s), not the {int(n_components)} asked for: at most one per 20 "
                f"non-zero gene vectors and fewer than the vectors' {self.dim} dimensions.",
                ScelmoWarning, stacklevel=2,
            )
        if self.conditioning is None or refit or self.conditioning.n_components != k:
            self.conditioning = Conditioning.fit(self.vectors, n_components=k)
        return self

    def _components_for(self, n_components: int | None) -> int:
        """The directions :meth:`condition` removes when asked for ``n_components``."""
        k = DEFAULT_COMPONENTS if n_components is None else int(n_components)
        n_vec = int((np.abs(self.vectors).sum(axis=1) > 0).sum())
        return max(0, min(k, n_vec // 20, self.dim - 1))  # small tables: at most 1 direction per 20 genes

    def conditioned_as(self, n_components: int | None) -> GeneEmbeddings:
        """This table when its conditioning removes ``n_components`` directions (as
        :meth:`condition` counts them), else a copy sharing its vectors with that conditioning
        fitted: the table itself (and a saved one on disk) keeps the conditioning it has."""
        if self.conditioning is not None and self.conditioning.n_components == self._components_for(n_components):
            return self
        other = copy.copy(self)
        other.conditioning = None
        return other.condition(n_components=n_components)

    def combine(self, other: GeneEmbeddings, *, how: Literal["sum", "concat"] = "concat") -> GeneEmbeddings:
        """Combine two tables on their shared genes (the paper's E1+E2 or [E1, E2])."""
        shared = [g for g in self.genes if g in other]
        a, _ = self.aligned(shared)
        b, _ = other.aligned(shared)
        if how == "sum":
            if a.shape[1] != b.shape[1]:
                raise InputError(f"Cannot sum tables of width {a.shape[1]} and {b.shape[1]}; use how='concat'.")
            vec = a + b
        elif how == "concat":
            vec = np.hstack([a, b])
        else:
            raise InputError(f"how must be 'sum' or 'concat', got {how!r}.")
        manifest = {"combined": how, "left": json.dumps(self.manifest), "right": json.dumps(other.manifest)}
        return GeneEmbeddings(shared, vec, manifest)  # a new table: its conditioning is fitted anew

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``vectors.npy``, ``genes.txt`` and ``manifest.json`` (with checksums) to a directory.

        The directory appears atomically: files are written to a temporary sibling
        directory that is then renamed into place. A fitted conditioning is saved as
        ``conditioning.npz`` beside the vectors.
        """
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite, marker="manifest.json") as tmp:
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            # (no genes: an empty file, which reads back as no genes, not as one named "")
            (tmp / "genes.txt").write_text("".join(f"{g}\n" for g in self.genes), encoding="utf-8")
            files = ["vectors.npy", "genes.txt"]
            if self.conditioning is not None:
                self.conditioning.save(tmp / "conditioning.npz")
                files.append("conditioning.npz")
            manifest = {
                "format": "scelmo.GeneEmbeddings",
                "format_version": 1,
                "n_genes": len(self.genes),
                "dim": self.dim,
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "provenance": self.manifest,
                "conditioning": self.conditioning.provenance() if self.conditioning is not None else None,
                "files": {f: sha256_file(tmp / f) for f in files},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GeneEmbeddings:
        """Read a directory written by :meth:`save`, verifying its checksums."""
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():  # a wrong path is the caller's input, not a failure here
            what = "does not exist" if not path.exists() else "is not a saved GeneEmbeddings directory (no manifest.json)"
            raise InputError(f"{path} {what}. Pass a directory written by `GeneEmbeddings.save` or "
                             "`scelmo embed-genes`, or leave it out to use the configured gene table.")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{mpath} is not valid JSON ({exc}); the saved embeddings are corrupt or were "
                                 "edited. Re-create them with `scelmo embed-genes`.") from None
        if not isinstance(manifest, dict):
            raise IntegrityError(f"{mpath} is not a GeneEmbeddings manifest. Re-create it with `scelmo embed-genes`.")
        for fname, digest in manifest.get("files", {}).items():
            fpath = path / fname
            if not fpath.is_file() or sha256_file(fpath) != digest:
                raise IntegrityError(
                    f"{fpath} is missing or does not match the checksum in {mpath}; the saved "
                    "embeddings are corrupt or were edited. Re-create them with `scelmo embed-genes`."
                )
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        genes = (path / "genes.txt").read_text(encoding="utf-8").splitlines()
        cond_path = path / "conditioning.npz"
        cond = Conditioning.load(cond_path) if "conditioning.npz" in manifest.get("files", {}) else None
        return cls(genes, vectors, manifest.get("provenance", {}), cond)
