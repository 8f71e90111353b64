"""Generating cells token by token, conditioned on the registered labels and batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scipy import sparse

from ..._docs import DOC_CONDITION_KIND, DOC_DRAWS, DOC_N_CELLS_DRAWN, doc_params
from ..._validation import did_you_mean

if TYPE_CHECKING:
    from collections.abc import Sequence


class GenerationMixin:
    """Sample binned cells from an autoregressive network (:class:`~bioformers.module.BioFormerDecoderModule`)."""

    @doc_params(kind=DOC_CONDITION_KIND)
    def condition_codes(self, kind: Literal["labels", "batch"], values: Sequence[str | None]) -> np.ndarray:
        """Codes of condition values for the decoder.

        Parameters
        ----------
        {kind}
        values
            One category of the registered column per cell, or ``None`` for an unknown condition.

        Returns
        -------
        :class:`~numpy.ndarray`
            ``int64`` codes, one per value; ``None`` gets the code after the last category (unknown).

        Raises
        ------
        ValueError
            A value is not a known category (the message names the known ones), or a value is given
            for a column the model was not set up with.
        """
        categories = self.condition_categories(kind)
        key = {"labels": "labels_key", "batch": "batch_key"}[kind]
        if not categories:
            if any(v is not None for v in values):
                raise ValueError(
                    f"The model was trained without `{key}`, so it cannot condition on it. Train the decoder with "
                    f"`bf.tl.pretrain(adata, architecture='decoder', {key}=...)`, or generate without a condition."
                )
            return np.zeros(len(values), dtype=np.int64)
        index = {c: i for i, c in enumerate(categories)}
        unknown = sorted({str(v) for v in values if v is not None and str(v) not in index})
        if unknown:
            raise ValueError(
                f"Unknown {key} value(s) {unknown}; the model knows {categories}.{did_you_mean(unknown[0], categories)}"
            )
        return np.array([len(categories) if v is None else index[str(v)] for v in values], dtype=np.int64)

    @torch.inference_mode()
    @doc_params(n_cells=DOC_N_CELLS_DRAWN, draws=DOC_DRAWS)
    def generate(
        self,
        n_cells: int,
        *,
        labels: Sequence[str | None] | None = None,
        batch: Sequence[str | None] | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 256,
    ) -> sparse.csr_matrix:
        """Sample binned cells from the decoder.

        :func:`bioformers.tl.generate` wraps this into an AnnData. Same seed, same cells (on one machine).

        Parameters
        ----------
        {n_cells}
        labels
            Each cell's label: a value of the registered ``labels_key`` column, or ``None`` for
            unconditional; ``None`` (instead of a list) leaves all unknown.
        batch
            Each cell's batch, the same way for the registered ``batch_key`` column.
        temperature
            Softmax temperature of every draw; below 1 sharpens towards the most likely genes and bins.
        {draws}

        Returns
        -------
        :class:`~scipy.sparse.csr_matrix`
            ``int16`` ``(n_cells, n_genes)``, the bins of the model's genes (``model.genes_``).

        Examples
        --------
        >>> import bioformers as bf
        >>> adata = bf.datasets.synthetic(n_obs=200, n_vars=50)
        >>> model = bf.tl.pretrain(
        ...     adata, architecture="decoder", labels_key="cell_type", n_layers=1, n_hidden=16, max_epochs=1
        ... )
        >>> bins = model.generate(3, labels=["type_0", "type_1", None])
        >>> bins.shape, bins.dtype
        ((3, 50), dtype('int16'))
        """
        self._check_if_trained(warn=False)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, not {temperature}.")
        labels = self.condition_codes("labels", [None] * n_cells if labels is None else list(labels))
        batch = self.condition_codes("batch", [None] * n_cells if batch is None else list(batch))
        if len(labels) != n_cells or len(batch) != n_cells:
            raise ValueError(f"`labels` and `batch` need one value per cell ({n_cells}).")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.module.eval()
        rows, cols, data = [], [], []
        with self.inference_context():
            for start in range(0, n_cells, batch_size):
                part = slice(start, min(start + batch_size, n_cells))
                genes, values = self.module.sample(
                    part.stop - part.start,
                    labels=torch.from_numpy(labels[part]) if self.module.n_labels else None,
                    batch_index=torch.from_numpy(batch[part]) if self.module.n_batch else None,
                    temperature=temperature,
                    generator=generator,
                )
                cell, step = (values > 0).nonzero(as_tuple=True)
                rows.append((cell + start).cpu().numpy())
                cols.append(genes[cell, step].cpu().numpy())
                data.append(values[cell, step].cpu().numpy())
        shape = (n_cells, self.genes_.size)
        if not rows:
            return sparse.csr_matrix(shape, dtype=np.int16)
        matrix = sparse.coo_matrix(
            (np.concatenate(data).astype(np.int16), (np.concatenate(rows), np.concatenate(cols))), shape=shape
        )
        return matrix.tocsr()
