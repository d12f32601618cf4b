"""γ-policies, one file each, behind the :class:`~speckv.policies.base.GammaPolicy` protocol; chosen by name."""

from __future__ import annotations

from speckv.config import PolicySpec
from speckv.policies.base import GammaPolicy, StepContext

__all__ = ["GammaPolicy", "StepContext", "build_policy"]


def build_policy(spec: PolicySpec) -> GammaPolicy:
    if spec.name == "ar":
        from speckv.policies.ar import ArPolicy

        return ArPolicy()
    if spec.name == "fixed":
        from speckv.policies.fixed import FixedPolicy

        return FixedPolicy(spec.gamma)
    if spec.name == "heuristic":
        from speckv.policies.heuristic import HeuristicPolicy

        return HeuristicPolicy(spec.gamma, spec.max_gamma)
    if spec.name == "confidence":
        from speckv.policies.confidence import ConfidencePolicy

        return ConfidencePolicy(spec.confidence_threshold, spec.max_gamma)
    if spec.name == "entropy":
        from speckv.policies.entropy import EntropyPolicy

        return EntropyPolicy(spec.entropy_threshold, spec.max_gamma)
    if spec.name == "ema":
        from speckv.policies.ema import EmaPolicy

        return EmaPolicy(spec.gamma, spec.max_gamma, spec.ema_alpha)
    from speckv.policies.learned import LearnedPolicy

    return LearnedPolicy.load(spec.path, spec.max_gamma)
