"""One simulated experiment written in every form a lab has its guides in (the tests of issue 25).

The simulator writes guide UMI counts in ``obsm["guide_assignment"]`` (non-zero = the guide
was detected). These helpers write the same counts as

* Cell Ranger's ``protospacer_calls_per_cell.csv`` (one file per replicate, as two Cell
  Ranger runs would make, with the plain ``<barcode>-1`` names),
* a 10x ``filtered_feature_bc_matrix.h5`` (a few gene-expression features and the
  ``CRISPR Guide Capture`` features),
* an ``.h5mu`` whose ``rna`` modality is the AnnData (without the guide matrix) and whose
  ``gdo`` modality holds the counts,
* a layer of counts in the AnnData itself.

The AnnData's cells are named like a concatenation of two 10x runs: ``<barcode>-1-<k>``
for replicate k (``anndata.concat(..., index_unique="-")``), so reading a Cell Ranger file
needs the barcode matching; some barcodes occur in both replicates (as in real runs).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

NUCLEOTIDES = np.array(list("ACGT"))


def barcodes(n: int, seed: int = 0, shared: float = 0.05) -> np.ndarray:
    """``n`` 16-nt barcodes, unique within each half; a ``shared`` share of the second half repeats the first's."""
    rng = np.random.default_rng(seed)
    ints = rng.choice(4**16, size=n, replace=False)  # distinct barcodes
    codes = NUCLEOTIDES[(ints[:, None] >> (2 * np.arange(16))) & 3]
    out = np.array(["".join(row) for row in codes], dtype=object)
    half = n // 2
    k = int(shared * (n - half))
    out[half : half + k] = out[:k]  # the same barcode in both runs, different cells
    return out


def name_cells(adata: ad.AnnData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rename the cells ``<barcode>-1-<k>`` (k: the replicate's position); return the plain barcodes and replicates."""
    rep = adata.obsm["covariates"]["replicate"].astype(str).to_numpy()
    order = np.argsort(rep, kind="stable")
    codes = np.empty(adata.n_obs, dtype=object)
    codes[order] = barcodes(adata.n_obs, seed)
    plain = codes + "-1"
    k = pd.factorize(rep, sort=True)[0]
    adata.obs_names = pd.Index(plain + "-" + k.astype(str))
    return plain, rep


def counts_of(adata: ad.AnnData, key: str = "guide_assignment") -> tuple[sp.csr_matrix, list[str]]:
    """The simulated guide UMI counts (CSR) and the guide names."""
    return sp.csr_matrix(adata.obsm[key]), [str(g) for g in adata.uns[f"{key}_names"]]


def write_calls_csv(path: Path, counts: sp.csr_matrix, guides: list[str], cells: np.ndarray) -> Path:
    """Cell Ranger's ``protospacer_calls_per_cell.csv``: every non-zero entry is a call."""
    coo = counts.tocoo()
    entries = pd.DataFrame({"row": coo.row, "guide": np.asarray(guides, dtype=object)[coo.col],
                            "umi": coo.data.astype(np.int64).astype(str)})
    table = entries.sort_values(["row", "guide"]).groupby("row", sort=True).agg(
        num_features=("guide", "size"), feature_call=("guide", "|".join), num_umis=("umi", "|".join)
    )
    table.insert(0, "cell_barcode", np.asarray(cells, dtype=object)[table.index.to_numpy()])
    table.to_csv(path, index=False)
    return path


def write_10x_h5(path: Path, counts: sp.csr_matrix, guides: list[str], cells: np.ndarray, n_genes: int = 4) -> Path:
    """A Cell Ranger ``filtered_feature_bc_matrix.h5``: ``n_genes`` expression features, then the guides."""
    n = counts.shape[0]
    rng = np.random.default_rng(1)
    genes = sp.random(n, n_genes, density=0.5, format="csr", random_state=rng, data_rvs=lambda k: rng.integers(1, 9, k))
    full = sp.hstack([genes, counts], format="csr").astype(np.int32)
    full.sort_indices()
    names = [f"GENE{i}" for i in range(n_genes)] + list(guides)
    types = ["Gene Expression"] * n_genes + ["CRISPR Guide Capture"] * len(guides)
    with h5py.File(path, "w") as h5:
        m = h5.create_group("matrix")
        m["barcodes"] = np.asarray(cells, dtype="S")
        m["data"], m["indices"], m["indptr"] = full.data, full.indices, full.indptr
        m["shape"] = np.array([len(names), n], dtype=np.int32)
        f = m.create_group("features")
        f["name"] = np.asarray(names, dtype="S")
        f["id"] = np.asarray([f"ID{i}" for i in range(len(names))], dtype="S")
        f["feature_type"] = np.asarray(types, dtype="S")
        f["genome"] = np.asarray(["GRCh38"] * len(names), dtype="S")
    return path


def rna_only(adata: ad.AnnData, key: str = "guide_assignment") -> ad.AnnData:
    """The AnnData without its guide matrix (what CellRank leaves in the RNA modality)."""
    rna = adata.copy()
    del rna.obsm[key]
    rna.uns.pop(f"{key}_names", None)
    return rna


def guide_modality(counts: sp.csr_matrix, guides: list[str], cells: np.ndarray) -> ad.AnnData:
    """A guide modality: cells x guides counts."""
    return ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=pd.DataFrame(index=pd.Index(cells)),
                      var=pd.DataFrame(index=pd.Index(guides)))


def write_h5mu(path: Path, adata: ad.AnnData, modality: str = "gdo", key: str = "guide_assignment") -> Path:
    """An ``.h5mu`` with ``rna`` (the AnnData without the guide matrix) and the guide counts in ``modality``."""
    import mudata as md

    md.set_options(pull_on_update=False)
    counts, guides = counts_of(adata, key)
    mdata = md.MuData({"rna": rna_only(adata, key), modality: guide_modality(counts, guides, np.asarray(adata.obs_names))})
    mdata.write(path)
    return path


def with_counts_layer(adata: ad.AnnData, key: str = "guide_assignment") -> ad.AnnData:
    """A 10x-style AnnData: X/layers['counts'] over gene and guide features, var['feature_types'] says which."""
    counts, guides = counts_of(adata, key)
    n = adata.n_obs
    genes = sp.csr_matrix((n, 3), dtype=np.float32)
    full = sp.hstack([genes, counts], format="csr").astype(np.float32)
    var = pd.DataFrame({"feature_types": ["Gene Expression"] * 3 + ["CRISPR Guide Capture"] * len(guides)},
                       index=pd.Index([f"GENE{i}" for i in range(3)] + guides))
    out = ad.AnnData(X=sp.csr_matrix((n, full.shape[1]), dtype=np.float32), obs=adata.obs.copy(), var=var,
                     obsm={k: v for k, v in adata.obsm.items() if k != key}, uns={k: v for k, v in adata.uns.items() if k != f"{key}_names"},
                     layers={"counts": full})
    return out
