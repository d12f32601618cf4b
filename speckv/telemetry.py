"""Every telemetry and output column, defined once.

Two tables:

``STEP_SCHEMA``    one row per (request, verify step) — what the selector is trained on and what ``analyze`` reads.
``OUTPUT_SCHEMA``  one row per input line — the generated text plus the per-request summary.

Names follow vLLM's spec-decode metrics where one exists. Conventions, written down once:

* ``num_draft_tokens`` is γ actually used in the step (0 = plain decoding step).
* ``num_accepted_tokens`` counts accepted drafts only; every step also emits one recovered or bonus token.
* ``mean_acceptance_length`` = (accepted + steps) / steps, i.e. tokens emitted per verify step, bonus included.
* ``draft_acceptance_rate`` = accepted / drafted.
* ``acceptance_histogram[n]`` = number of verify steps that accepted exactly n drafts.
* ``draft_ms`` and ``verify_ms`` are the wall times of the whole batched step, shared by its rows;
  ``decision_ms`` is the time spent in the γ-policy during the step divided by the rows that step served, and
  ``num_decisions`` the questions each row answered (its budget, then propose-or-stop at every draft forward), so
  ``decision_ms / num_decisions`` is the overhead per decision.
* ``draft_accept[i]`` says whether the target agreed with the drafted token at position i *given the drafted
  prefix*; only positions up to the first ``False`` affected the output. Greedy steps record the exact
  argmax agreement; sampled steps record the rejection test's outcome.
"""

from __future__ import annotations

import pyarrow as pa

STEP_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("request_id", pa.string(), "id of the request (input line)"),
    ("task", pa.string(), "task tag from the input, if any"),
    ("step", pa.int32(), "verify step index within the request, from 0"),
    ("batch_step_id", pa.int64(), "batched step counter of the engine (rows of one forward share it, per actor_id)"),
    ("policy", pa.string(), "γ-policy name"),
    ("drafter", pa.string(), "drafter kind (lm | eagle)"),
    ("batch_size", pa.int32(), "live sequences in this batched step"),
    ("context_len", pa.int32(), "prompt + generated tokens before the step"),
    ("num_draft_tokens", pa.int32(), "γ used in this step"),
    ("num_accepted_tokens", pa.int32(), "drafted tokens the target accepted"),
    ("num_emitted_tokens", pa.int32(), "tokens this step added to the output (after EOS/stop/length cuts)"),
    ("draft_top1", pa.list_(pa.float32()), "per drafted position: draft top-1 probability"),
    ("draft_entropy", pa.list_(pa.float32()), "per drafted position: draft entropy (nats)"),
    ("draft_accept", pa.list_(pa.bool_()), "per drafted position: target agreed, given the drafted prefix"),
    ("draft_ms", pa.float32(), "wall ms drafting in this batched step"),
    ("verify_ms", pa.float32(), "wall ms of the target's verify forward in this batched step"),
    ("decision_ms", pa.float32(), "policy ms in this step per row served"),
    ("num_decisions", pa.int32(), "policy decisions per row in this step: its budget + one per draft forward"),
    ("max_tokens_verified", pa.int32(), "1 + max γ over the batch: tokens per row in the verify forward"),
    ("temperature", pa.float32(), "sampling temperature (0 = greedy)"),
    ("target_dtype", pa.string(), "fp32 | bf16 | fp16"),
    ("quantization", pa.string(), "none | int8 | nf4"),
    ("compression", pa.string(), "quantization if any, else dtype: the level the policy conditions on"),
    ("device", pa.string(), "cpu | cuda"),
    ("gamma_max", pa.int32(), "largest γ the policy could choose"),
    ("accept_rate", pa.float32(), "the row's accepted ÷ judged draft positions before this step (discounted sums, "
     "see speckv.engine.ACCEPT_DECAY), as the policy saw it"),
    ("actor_id", pa.string(), "which engine produced it (process / Ray actor)"),
]

STEP_SCHEMA = pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in STEP_FIELDS])

SUMMARY_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("num_spec_steps", pa.int32(), "verify steps"),
    ("num_draft_tokens", pa.int64(), "drafted tokens over all steps"),
    ("num_accepted_tokens", pa.int64(), "accepted drafted tokens over all steps"),
    ("mean_acceptance_length", pa.float32(), "(accepted + steps) / steps, bonus token included"),
    ("draft_acceptance_rate", pa.float32(), "accepted / drafted (null when nothing was drafted)"),
    ("acceptance_histogram", pa.list_(pa.int32()), "steps that accepted exactly n drafts, n = 0..gamma_max"),
]

OUTPUT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("id", pa.string(), "request id (input 'id' or the line number)"),
    ("task", pa.string(), "task tag from the input"),
    ("prompt", pa.string(), "prompt text (or the chat messages as JSON)"),
    ("text", pa.string(), "generated text"),
    ("token_ids", pa.list_(pa.int32()), "generated token ids only"),
    ("num_prompt_tokens", pa.int32(), "prompt tokens after the chat template"),
    ("num_generated_tokens", pa.int32(), "len(token_ids)"),
    ("finish_reason", pa.string(), "stop | length | error"),
    ("status", pa.string(), "ok | error"),
    ("error", pa.string(), "what was wrong with the row, when status is error"),
    ("policy", pa.string(), "γ-policy name"),
    ("wall_ms", pa.float32(), "wall ms of the batch that generated the row"),
    *SUMMARY_FIELDS,
    ("actor_id", pa.string(), "which engine produced it"),
]

OUTPUT_SCHEMA = pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in OUTPUT_FIELDS])


def summarize(steps: list[dict], gamma_max: int) -> dict:
    """Per-request summary columns from its step rows (vLLM's names and conventions)."""
    drafted = sum(r["num_draft_tokens"] for r in steps)
    accepted = sum(r["num_accepted_tokens"] for r in steps)
    histogram = [0] * (gamma_max + 1)
    for r in steps:
        histogram[min(r["num_accepted_tokens"], gamma_max)] += 1
    return {
        "num_spec_steps": len(steps),
        "num_draft_tokens": drafted,
        "num_accepted_tokens": accepted,
        "mean_acceptance_length": (accepted + len(steps)) / len(steps) if steps else None,
        "draft_acceptance_rate": accepted / drafted if drafted else None,
        "acceptance_histogram": histogram,
    }


def steps_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=STEP_SCHEMA)


def outputs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
