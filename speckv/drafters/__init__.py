"""Drafters, one file per kind, behind the :class:`~speckv.drafters.base.Drafter` protocol."""

from __future__ import annotations

import torch

from speckv.config import EMBEDDED, DraftSpec, ModelSpec
from speckv.drafters.base import Drafter

__all__ = ["Drafter", "build_drafter"]


def build_drafter(spec: DraftSpec, target: torch.nn.Module, target_spec: ModelSpec, device: torch.device) -> Drafter:
    """Load the drafter ``spec`` names for ``target`` (already loaded on ``device``)."""
    if spec.kind == "eagle":
        from speckv.drafters.eagle import EagleDrafter, default_eagle_path

        path = default_eagle_path() if spec.source == EMBEDDED else spec.source
        return EagleDrafter.load(path, target, device, int8_weights=spec.int8_weights)

    from speckv.drafters.draft_lm import DraftLM
    from speckv.models import load_causal_lm

    source = spec.source
    if source == EMBEDDED:
        from speckv.distill import draft_lm_dir

        source = str(draft_lm_dir())
    draft_spec = ModelSpec(source=source, dtype=spec.dtype or target_spec.dtype, device=target_spec.device)
    model, _ = load_causal_lm(draft_spec)
    return DraftLM(model, device, vocab_size=target.config.vocab_size)
