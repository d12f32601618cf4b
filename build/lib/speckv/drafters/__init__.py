"""Drafters, one file per kind, behind the :class:`~speckv.drafters.base.Drafter` protocol."""

from __future__ import annotations

import torch

from speckv.config import EMBEDDED, DraftSpec, ModelSpec
from speckv.drafters.base import Drafter, Drafters

__all__ = ["Drafter", "Drafters", "build_drafter"]


def build_drafter(spec: DraftSpec, target: torch.nn.Module, target_spec: ModelSpec, device: torch.device) -> Drafter:
    """The drafters ``spec`` names for ``target`` (already loaded on ``device``), as one."""
    from speckv.drafters.lookup import LookupDrafter

    lookup = LookupDrafter(spec.lookup_min_ngram, spec.lookup_max_ngram, spec.lookup_tokens)
    if spec.kind == "lookup":
        return lookup
    if spec.kind == "eagle":
        from speckv.drafters.eagle import EagleDrafter, default_eagle_path

        path = default_eagle_path() if spec.source == EMBEDDED else spec.source
        head = EagleDrafter.load(path, target, device, int8_weights=spec.int8_weights)
    else:
        from speckv.drafters.draft_lm import DraftLM, draft_lm_dir
        from speckv.models import load_causal_lm

        source = str(draft_lm_dir()) if spec.source == EMBEDDED else spec.source
        draft_spec = ModelSpec(source=source, dtype=spec.dtype or target_spec.dtype, device=target_spec.device)
        head = DraftLM(load_causal_lm(draft_spec)[0], device, vocab_size=target.config.vocab_size)
    return Drafters([head, lookup]) if spec.lookup else head
