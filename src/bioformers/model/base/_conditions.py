"""The conditions a generative model was set up with (categorical, continuous, gene sets), checked and encoded."""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from ..._conditions import Conditions, condition_table
from ..._keys import PERTURBATION_KEY
from ..._validation import did_you_mean, shown
from ...data import perturbation_targets

if TYPE_CHECKING:
    from collections.abc import Sequence

ConditionKind = Literal["categorical", "continuous", "set"]


class ConditionsMixin:
    """Conditions a model was registered with and trained on; requested conditions checked against them.

    The columns are ``categorical_covariate_keys``, ``continuous_covariate_keys`` and ``perturbation_key``
    (a set condition: the perturbed genes).

    The model's module has ``conditions`` (a ``bioformers.nn.ConditionEmbedding``) and
    ``condition_dropout``; the model sets ``conditions_`` and ``seen_`` from
    ``_registered_conditions()`` and ``_seen_conditions()`` when it is built.
    """

    def _registered_conditions(self) -> list[dict]:
        """One dict per condition, in the module's order: categorical, continuous, set."""
        args = self.registry_["setup_args"]
        conditions: list[dict] = []
        categorical = args.get("categorical_covariate_keys") or []
        if categorical:
            mappings = self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).mappings
            conditions += [
                {"key": k, "kind": "categorical", "values": [str(v) for v in mappings[k]]} for k in categorical
            ]
        conditions += [{"key": k, "kind": "continuous"} for k in args.get("continuous_covariate_keys") or []]
        if args.get("perturbation_key") is not None:
            labels = [str(v) for v in self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping]
            control = args["control"]
            items = list(dict.fromkeys(t for label in labels for t in perturbation_targets(label, control)))
            conditions.append(
                {"key": args["perturbation_key"], "kind": "set", "values": labels, "items": items, "control": control}
            )
        return conditions

    def _condition(self, kind: ConditionKind) -> dict | None:
        return next((c for c in self.conditions_ if c["kind"] == kind), None)

    @property
    def condition_keys(self) -> list[str]:
        """The ``obs`` columns the model conditions on, in registration order (categorical, continuous, set)."""
        return [c["key"] for c in self.conditions_]

    def _condition_frame(self, kinds: Sequence[ConditionKind] = ("categorical", "continuous", "set")) -> pd.DataFrame:
        """The registered AnnData's conditions of the given kinds, as a DataFrame."""
        keys = [c["key"] for c in self.conditions_ if c["kind"] in kinds]
        return self.adata.obs[keys].copy() if keys else pd.DataFrame(index=self.adata.obs_names)

    def _set_label(self, value: str) -> str:
        """A set condition's canonical label: its genes sorted and joined by ``+`` (``control``: itself)."""
        control = self._condition("set")["control"]
        targets = perturbation_targets(str(value), control)
        return control if not targets else "+".join(sorted(targets))

    def _set_items(self, labels: Sequence[str]) -> np.ndarray:
        """Item indices of set labels, ``(labels, slots)``, -1 padding; raises naming unknown genes."""
        condition = self._condition("set")
        index = {item: i for i, item in enumerate(condition["items"])}
        parsed = [perturbation_targets(str(label), condition["control"]) for label in labels]
        unknown = sorted({t for targets in parsed for t in targets if t not in index})
        if unknown:
            raise ValueError(
                f"Unknown perturbation(s) {unknown} in `{condition['key']}`: the model has embeddings only for the "
                f"genes perturbed in training, {shown(condition['items'])} (or {condition['control']!r} for control "
                "cells)."
                f"{did_you_mean(unknown[0], condition['items'])}"
            )
        table = np.full((len(labels), max(1, max(map(len, parsed), default=1))), -1, dtype=np.int64)
        for row, targets in enumerate(parsed):
            table[row, : len(targets)] = [index[t] for t in targets]
        return table

    def _seen_conditions(self) -> dict:
        """Combinations of categorical and set conditions seen in training, and each continuous range."""
        discrete = [c["key"] for c in self.conditions_ if c["kind"] != "continuous"]
        frame = self._condition_frame(kinds=("categorical", "set")).astype(str)
        if self._condition("set"):
            key = self._condition("set")["key"]
            frame[key] = [self._set_label(v) for v in frame[key]]
        combinations = frame.drop_duplicates().to_numpy().tolist() if discrete else []
        ranges = {
            c["key"]: [float(self.adata.obs[c["key"]].min()), float(self.adata.obs[c["key"]].max())]
            for c in self.conditions_
            if c["kind"] == "continuous"
        }
        return {"keys": discrete, "combinations": combinations, "ranges": ranges}

    def check_conditions(self, conditions: Conditions, *, allow_unseen: bool = False) -> pd.DataFrame:
        """Check conditions for :meth:`generate`; return them as a table, one row per condition.

        Parameters
        ----------
        conditions
            * a dict mapping every condition key (:attr:`condition_keys`) to a value, or to a list of
              values (all lists of one length; single values are repeated), one condition per position;
            * a DataFrame with one column per condition key and one row per condition;
            * for a model with a single condition, a value or a list of values of it;
            * ``None``: one unconditional condition.

            ``None`` (or NaN) as a value leaves that condition out: the model's "none" embedding stands
            in for it, which needs ``condition_dropout > 0`` in training.
        allow_unseen
            Allow conditions never seen in training: a combination of categories (and perturbations)
            that no training cell had, or a continuous value outside the training range. The model
            then extrapolates; by default they are refused.

        Returns
        -------
        :class:`~pandas.DataFrame`
            One row per condition, one column per condition key (:attr:`condition_keys`); ``None``
            where a condition is left out.

        Raises
        ------
        ValueError
            A condition key is missing or unknown, a value is unknown (the message lists the known
            ones), or a condition was never seen in training and ``allow_unseen`` is ``False``.
        """
        table = condition_table(conditions, self.condition_keys, missing="raise")
        for condition in self.conditions_:
            key, column = condition["key"], table[condition["key"]]
            given = column[column.notna()]
            if len(given) < len(column) and not self.module.condition_dropout:
                raise ValueError(
                    f"Condition {key!r} is left out (None) for some cells, but the model was trained with "
                    "`condition_dropout=0`, so it never learned to generate without it. Give a value of "
                    f"{key!r} for every condition, or train with `condition_dropout > 0`."
                )
            if condition["kind"] == "categorical":
                unknown = sorted({str(v) for v in given if str(v) not in set(condition["values"])})
                if unknown:
                    raise ValueError(
                        f"Unknown value(s) {unknown} of condition {key!r}; the model knows "
                        f"{shown(condition['values'], limit=30)}.{did_you_mean(unknown[0], condition['values'])} "
                        f"Pass `None` for {key!r} to generate without it."
                    )
            elif condition["kind"] == "continuous":
                bad = [v for v in given if isinstance(v, bool) or not isinstance(v, Real) or not np.isfinite(v)]
                if bad:
                    raise ValueError(
                        f"Condition {key!r} is continuous: its values must be finite numbers, not {bad[:5]}."
                    )
            else:
                self._set_items([str(v) for v in given])
        if not allow_unseen:
            self._refuse_unseen(table)
        return table

    def _refuse_unseen(self, table: pd.DataFrame) -> None:
        seen = self.seen_
        for key, (low, high) in seen["ranges"].items():
            outside = sorted({float(v) for v in table[key] if v is not None and not low <= float(v) <= high})
            if outside:
                raise ValueError(
                    f"Condition {key!r} = {outside[:5]} lies outside the training range [{low:g}, {high:g}]: the model "
                    "would extrapolate. Pass `allow_unseen=True` to generate anyway."
                )
        if not seen["keys"]:
            return
        observed = pd.DataFrame(seen["combinations"], columns=seen["keys"])
        set_key = self._condition("set")["key"] if self._condition("set") else None
        for _, row in table.iterrows():
            given = {
                k: (self._set_label(row[k]) if k == set_key else str(row[k]))
                for k in seen["keys"]
                if row[k] is not None
            }
            if not given:
                continue
            match = np.logical_and.reduce([observed[k].to_numpy() == v for k, v in given.items()])
            if not match.any():
                described = ", ".join(f"{k}={v!r}" for k, v in given.items())
                raise ValueError(
                    f"No training cell had {described}: the model would generate a condition it never saw, "
                    "extrapolating from the separate embeddings. Pass `allow_unseen=True` to do that on purpose, or "
                    "`None` for a condition to leave it out."
                )

    def _encode_conditions(self, table: pd.DataFrame) -> dict[str, torch.Tensor | None]:
        """Module inputs for a checked condition table (one row per cell)."""
        n = len(table)
        categorical = [c for c in self.conditions_ if c["kind"] == "categorical"]
        codes = np.zeros((n, len(categorical)), dtype=np.int64)
        for i, c in enumerate(categorical):
            index = {v: j for j, v in enumerate(c["values"])}
            codes[:, i] = [len(c["values"]) if v is None else index[str(v)] for v in table[c["key"]]]
        continuous = [c["key"] for c in self.conditions_ if c["kind"] == "continuous"]
        values = np.array(
            [[np.nan if v is None else float(v) for v in table[k]] for k in continuous], dtype=np.float32
        ).T.reshape(n, len(continuous))
        set_condition = self._condition("set")
        items = set_none = None
        if set_condition:
            column = table[set_condition["key"]]
            labels = [set_condition["control"] if v is None else str(v) for v in column]
            items = torch.from_numpy(self._set_items(labels))
            set_none = torch.tensor([v is None for v in column])
        return {
            "categorical": torch.from_numpy(codes),
            "continuous": torch.from_numpy(values),
            "set_items": items,
            "set_none": set_none,
        }

    def _condition_vector(self, encoded: dict, rows: slice | None = None, *, none: bool = False) -> torch.Tensor:
        part = {k: (v[rows] if v is not None and rows is not None else v) for k, v in encoded.items()}
        n = len(part["categorical"])
        device = self.device
        part = {k: (v.to(device) if v is not None else None) for k, v in part.items()}
        drop = torch.ones(n, self.module.conditions.n_keys, dtype=torch.bool, device=device) if none else None
        return self.module.conditions(
            n, part["categorical"], part["continuous"], part["set_items"], part["set_none"], drop
        )
