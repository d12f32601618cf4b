"""Budget policies, one file each, behind the :class:`~speckv.policies.base.Policy` protocol; chosen by name."""

from __future__ import annotations

from speckv.config import PolicySpec
from speckv.policies.base import Policy, StepContext

__all__ = ["Policy", "StepContext", "build_policy"]


def build_policy(spec: PolicySpec) -> Policy:
    if spec.name == "ar":
        from speckv.policies.ar import ArPolicy

        return ArPolicy()
    if spec.name == "fixed":
        from speckv.policies.fixed import FixedPolicy

        return FixedPolicy(spec.gamma, spec.depth, spec.topk)
    if spec.name == "heuristic":
        from speckv.policies.heuristic import HeuristicPolicy

        return HeuristicPolicy(spec.gamma, spec.max_gamma)
    if spec.name in ("confidence", "entropy"):
        from speckv.policies.confidence import SignalStopPolicy

        threshold = spec.confidence_threshold if spec.name == "confidence" else spec.entropy_threshold
        return SignalStopPolicy(spec.name, threshold, spec.max_gamma)
    if spec.name == "ema":
        from speckv.policies.ema import EmaPolicy

        return EmaPolicy(spec.gamma, spec.max_gamma, spec.ema_alpha)
    from speckv.policies.learned import LearnedPolicy

    return LearnedPolicy.load(spec.path, spec.max_gamma, spec.depth, spec.topk)
