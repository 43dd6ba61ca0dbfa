from __future__ import annotations

import numpy as np
import pytest

from scelmo.errors import InputError, IntegrityError, ScelmoError
from scelmo.genes import GeneEmbeddings, GeneVocabulary


@pytest.fixture(scope="module")
def vocab():
    from scelmo_local.knowledge import vocabulary

    return vocabulary()


def test_bundled_vocabulary_is_large(vocab):
    assert len(vocab) > 40_000
    assert len(vocab.mouse) > 20_000
    assert len(vocab.ensembl) > 30_000


@pytest.mark.parametrize(
    ("name", "symbol", "how"),
    [
        ("CD3E", "CD3E", "symbol"),
        ("cd3e", "CD3E", "symbol"),
        ("Leu-16", "MS4A1", "alias"),             # alias, any case
        ("CD20", None, "unknown"),                # ambiguous alias (MS4A1 and KRT20): refused
        ("ENSG00000198851", "CD3E", "ensembl"),    # human Ensembl
        ("ENSG00000198851.10", "CD3E", "ensembl"), # with version suffix
        ("ENSG00000002586.20_PAR_Y", "CD99", "ensembl"),  # GENCODE's Y copy of a pseudoautosomal gene
        ("ENSMUSG00000024673", "MS4A1", "ensembl"),  # mouse Ensembl -> human ortholog
        ("nan", None, "missing_name"),            # str() of a missing symbol, not an alias of SCN11A
        ("NA", None, "missing_name"),             # not XK (an alias)
        ("None", None, "missing_name"),
        ("", None, "missing_name"),
    ],
)
def test_resolve_human(vocab, name, symbol, how):
    res = vocab.resolve([name], species="human")
    assert res.symbols == [symbol]
    assert res.how == [how]


def test_resolve_mouse_symbols_through_orthologs(vocab):
    res = vocab.resolve(["Ms4a1", "Cd3e", "Ptprc", "Nkg7", "Notagene1"])
    assert res.species == "mouse"
    assert res.symbols[:4] == ["MS4A1", "CD3E", "PTPRC", "NKG7"]
    assert res.symbols[4] is None
    assert res.how[0] == "mouse_ortholog"


def test_mouse_and_mitochondrial_names_resolve_to_the_same_named_gene(vocab):
    """Trial findings: the ortholog table made Cxcl1 CXCL2, Ifit1 IFIT1B and Klrc2 KLRC1 though
    CXCL1, IFIT1 and KLRC2 exist; a human MT-CO2 took the alias of a nuclear pseudogene
    (MTCO2P12) and MT-CYB was unknown; one ENSG ID among mouse symbols made them human."""
    mouse = vocab.resolve(["Cxcl1", "Cxcl2", "Ifit1", "Klrc2", "Ms4a1", "mt-Co2", "mt-Cytb"], species="mouse")
    assert mouse.symbols == ["CXCL1", "CXCL2", "IFIT1", "KLRC2", "MS4A1", "COX2", "CYTB"]
    human = vocab.resolve(["MT-CO1", "MT-CO2", "MT-CO3", "MT-CYB", "MT-ND4L", "MT-ATP8"], species="human")
    assert human.symbols == ["COX1", "COX2", "COX3", "CYTB", "ND4L", "ATP8"]
    assert set(human.how) == {"mitochondrial"}
    assert vocab.guess_species(["Cd3e", "Cd4", "Ms4a1", "Nkg7", "ENSG00000167286"]) == "mouse"
    assert vocab.guess_species(["CD3E", "CD4", "MS4A1", "ENSMUSG00000032093"]) == "human"


def test_the_sources_no_id_mark_is_not_an_ensembl_id(vocab):
    """Mouse trial: 92 rows of the mouse table have "-" for "no Ensembl ID", registered as an ID."""
    assert "-" not in vocab.ensembl
    assert vocab.resolve(["-"], species="human").symbols == [None]


def test_different_genes_sharing_one_vector_are_said():
    """Trial finding: embed_genes of 8 mouse names returned 4 vectors (Ly6a, Ly6c1, Ly6c2,
    Ly6g -> LY6H) without a word."""
    import warnings

    import scelmo
    from scelmo.errors import ScelmoWarning
    from scelmo.tl import _embedding

    _embedding._SAID_SHARED.clear()
    with pytest.warns(ScelmoWarning, match=r"4 gene names resolve to 1 genes .*Ly6a, Ly6c1, Ly6c2, Ly6g -> LY6H") as w:
        ge = scelmo.tl.embed_genes(genes=["Ly6a", "Ly6c1", "Ly6c2", "Ly6g", "Cd3e"])
    assert set(ge.genes) == {"LY6H", "CD3E"}
    # (a real-data trial: the names were upper-cased, the warning pointed inside scelmo, and
    # embed_genes then embed_cells on the same data said it twice)
    assert [r.filename for r in w if "share their vectors" in str(r.message)] == [__file__]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        scelmo.tl.embed_genes(genes=["Ly6a", "Ly6c1", "Ly6c2", "Ly6g", "Cd3e"])
    assert not [r for r in again if "share their vectors" in str(r.message)]


def test_unknown_and_ambiguous(vocab):
    res = vocab.resolve(["NOT_A_GENE", "ENSG99999999999"], species="human")
    assert res.symbols == [None, None]
    assert res.how == ["unknown", "unknown_ensembl"]


def test_copies_made_unique_are_not_read_as_another_genes_alias(vocab):
    """var_names_make_unique ("APP-1") and R's make.unique ("CAV1.1") copies of a gene in the
    same data get no vector; they used to resolve as aliases of other genes (PABPC4, CACNA1S)."""
    res = vocab.resolve(["APP", "APP-1", "CAV1", "CAV1.1", "GAPDH", "GAPDH-2"], species="human")
    assert res.symbols == ["APP", None, "CAV1", None, "GAPDH", None]
    assert res.how[1::2] == ["duplicate_copy"] * 3
    # without the base gene, or for symbols that end in a number themselves, nothing changes
    assert vocab.resolve(["APP-1"], species="human").symbols == ["PABPC4"]
    assert vocab.resolve(["NKX2", "NKX2-1", "HLA-A"], species="human").symbols[1:] == ["NKX2-1", "HLA-A"]
    assert vocab.resolve(["Nkx2", "Nkx2-1"], species="mouse").symbols[1] == "NKX2-1"


def test_names_written_by_r_make_names_resolve(vocab):
    """R's make.names (read.csv, as.data.frame) writes "-" as "." (H2.K1, HLA.DRA, MT.CO1): a
    real-data trial found the MHC genes of a mouse file unresolved."""
    res = vocab.resolve(["H2.K1", "H2.Ab1", "Hba.a1", "Cd3e"], species="mouse")
    assert res.symbols[:2] == vocab.resolve(["H2-K1", "H2-Ab1"], species="mouse").symbols
    assert None not in res.symbols
    assert res.how[:3] == ["r_make_names"] * 3
    res = vocab.resolve(["HLA.DRA", "MT.CO1", "CAV1", "CAV1.1", "AC006538.1"], species="human")
    assert res.symbols[:2] == ["HLA-DRA", "COX1"]
    assert res.how[3:] == ["duplicate_copy", "unknown"]  # make.unique copies and clone names stay as they were
    # a make.unique copy whose original is not in the list is no alias of another gene
    # ("APP-1" is one of PABPC4's)
    assert vocab.resolve(["APP.1", "Arc.1"], species="human").symbols == [None, None]


def test_full_gene_names_in_text(vocab):
    assert vocab.genes_named_in("Glucagon-producing cells") == ["GCG"]
    assert vocab.genes_named_in("interferon-gamma secreting T cell") == ["IFNG"]
    assert vocab.genes_named_in("pancreatic polypeptide cell") == ["PPY"]  # the longest name wins
    for name in ("B cell", "CD8 T cell", "plasma cell", "stellate cell", "platelet", "macrophage", "hepatocyte"):
        assert vocab.genes_named_in(name) == []
    for negated in ("insulin-negative cell", "non-insulin-producing cell", "desmin- fibroblast", "nestin low cell"):
        assert vocab.genes_named_in(negated) == []
    v = GeneVocabulary(["A1", "B1"], full_names=[("shared name", "A1"), ("shared name", "B1"), ("own", "B1")])
    assert v.genes_named_in("own shared name cell") == ["B1"]  # a name two genes share is no gene


def test_alias_ambiguity_and_symbol_priority():
    v = GeneVocabulary(["A1", "B1", "C1"], aliases=[("X", "A1"), ("X", "B1"), ("Y", "C1"), ("B1", "C1")])
    assert "X" not in v.aliases and v.n_ambiguous_aliases == 1
    assert v.resolve(["Y", "B1"], species="human").symbols == ["C1", "B1"]


def test_gene_embeddings_roundtrip_and_checksum(tmp_path):
    ge = GeneEmbeddings(["A", "B", "C"], np.arange(6, dtype=np.float32).reshape(3, 2), {"embed_model": "m"})
    path = ge.save(tmp_path / "ge")
    back = GeneEmbeddings.load(path)
    assert back.genes == ge.genes and np.array_equal(back.vectors, ge.vectors)
    assert back.manifest == {"embed_model": "m"}
    with pytest.raises(ScelmoError, match="exists"):
        ge.save(tmp_path / "ge")
    ge.save(tmp_path / "ge", overwrite=True)
    (path / "genes.txt").write_text("A\nB\nD\n")
    with pytest.raises(IntegrityError, match="checksum"):
        GeneEmbeddings.load(path)
    assert not list(tmp_path.glob(".ge*"))  # no temporary leftovers
    # a wrong path is an input error (R: scelmo_input_error), saying what to pass
    with pytest.raises(InputError, match="does not exist.*scelmo embed-genes"):
        GeneEmbeddings.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not a saved GeneEmbeddings directory"):
        GeneEmbeddings.load(tmp_path)
    # trial findings: overwrite=True replaced any directory (the input beside it, the user's
    # notes) and turned a file into a directory, leaving a hidden copy of the file behind
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds other files.*notes.txt"):
        ge.save(tmp_path / "results", overwrite=True)
    assert (tmp_path / "results" / "notes.txt").read_text() == "keep me"
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        ge.save(tmp_path / "a.txt", overwrite=True)
    assert (tmp_path / "a.txt").read_text() == "x" and not list(tmp_path.glob(".a.txt*"))
    (tmp_path / "empty").mkdir()
    ge.save(tmp_path / "empty", overwrite=True)  # an empty directory may be filled
    # a corrupt manifest is an integrity error, not a raw JSONDecodeError
    (path / "manifest.json").write_text("{oops")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        GeneEmbeddings.load(path)


def test_gene_embeddings_validation_and_alignment():
    with pytest.raises(InputError, match="duplicate"):
        GeneEmbeddings(["A", "A"], np.zeros((2, 2)))
    with pytest.raises(InputError, match="one vector per gene"):
        GeneEmbeddings(["A"], np.zeros((2, 2)))
    ge = GeneEmbeddings(["A", "B"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    M, mask = ge.aligned(["b", None, "A", "Z"])
    assert mask.tolist() == [True, False, True, False]
    assert M.tolist() == [[0, 1], [0, 0], [1, 0], [0, 0]]


def test_combine_sum_and_concat():
    a = GeneEmbeddings(["A", "B"], np.ones((2, 2)))
    b = GeneEmbeddings(["B", "C"], 2 * np.ones((2, 2)))
    s = a.combine(b, how="sum")
    assert s.genes == ["B"] and s.vectors.tolist() == [[3, 3]]
    c = a.combine(b, how="concat")
    assert c.dim == 4
