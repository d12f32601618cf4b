"""Exact cases for the dtype choice's arithmetic (speckv.hardware.dtype_score), on hand-built forward times."""

from __future__ import annotations

import pytest

from speckv.hardware import NEW_TOKENS, PROMPT_TOKENS, SHAPE_TOKENS, SPEC_TOKENS, dtype_score


def times(prefill: float, plain: float, verify: float, plain8: float, verify8: float) -> dict[str, float]:
    return {f"1x{PROMPT_TOKENS}": prefill, "1x1": plain, f"1x{SHAPE_TOKENS}": verify, "8x1": plain8,
            f"8x{SHAPE_TOKENS}": verify8}


def test_the_score_is_generated_tokens_per_ms_of_a_request_at_the_better_of_plain_and_speculative_steps():
    ms = times(prefill=600.0, plain=100.0, verify=460.0, plain8=240.0, verify8=368.0)
    # batch 1: plain (100 ms a token) beats speculation (460 / 2.3 = 200); batch 8: speculation, 368 / 18.4 = 20
    rate1 = NEW_TOKENS / (600.0 + NEW_TOKENS * 100.0)
    rate8 = NEW_TOKENS / (600.0 + NEW_TOKENS * 368.0 / (8 * SPEC_TOKENS))
    assert dtype_score(ms, 8) == pytest.approx((rate1 * rate8) ** 0.5)
    assert dtype_score(ms, 1) == pytest.approx(rate1)


def test_a_dtype_that_decodes_faster_but_prefills_far_slower_loses():
    # bf16 against fp32 on an AVX2-only CPU (README, "On an AVX2-only CPU": the times `auto` measured there): one
    # token at a time faster, in bulk several times slower
    fp32 = times(prefill=501.9, plain=113.6, verify=186.4, plain8=210.6, verify8=374.4)
    bf16 = times(prefill=1925.3, plain=62.5, verify=143.6, plain8=207.5, verify8=769.9)
    assert dtype_score(fp32, 8) > dtype_score(bf16, 8)
    # with the same prefill, the dtype faster at every decoding shape wins
    slower = times(prefill=501.9, plain=120.0, verify=240.0, plain8=250.0, verify8=400.0)
    assert dtype_score(fp32, 8) > dtype_score(slower, 8)
