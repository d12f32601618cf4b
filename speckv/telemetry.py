"""Every telemetry column and every acceptance figure, defined once.

Two tables:

``STEP_SCHEMA``    one row per (request, verify step) — what the selector is trained on and what ``analyze`` reads.
``OUTPUT_SCHEMA``  one row per input line — the generated text plus the per-request summary.

Names follow vLLM's spec-decode metrics where one exists. Conventions, written down once:

* A step verifies a *tree* of candidate nodes per row (a chain is a tree of width one): ``num_draft_tokens`` is
  the number of nodes verified (γ for a chain; 0 = plain decoding step).
* ``num_accepted_tokens`` counts accepted nodes only (the accepted path's length); every step also emits one
  recovered or bonus token.
* ``mean_acceptance_length`` = (accepted + steps) / steps, i.e. tokens emitted per verify step, bonus included.
* ``draft_acceptance_rate`` = accepted / drafted (for trees, siblings that lost count as drafted).
* ``acceptance_histogram[n]`` = number of verify steps that accepted exactly n nodes.
* ``draft_ms`` and ``verify_ms`` are the wall times of the whole batched step, shared by its rows;
  ``decision_ms`` is the time spent in the policy during the step divided by the rows that step served, and
  ``num_decisions`` the questions each row answered (its plan, one per draft depth, its cut), so
  ``decision_ms / num_decisions`` is the overhead per decision.
* Per-node lists (``node_*``, ``draft_*``) are in the proposal's node order (breadth first; node i's parent is
  ``node_parent[i]``, 0 = the root, the row's pending token, 1.. = the nodes of this list).
  ``draft_accept[i]`` says whether the target agreed with node i *given its parent* — greedy: whether the token
  is the target's argmax there, recorded for every node, so any sub-tree can be replayed; sampled: the rejection
  test's outcome where it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

STEP_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("request_id", pa.string(), "id of the request (input line)"),
    ("task", pa.string(), "task tag from the input, if any"),
    ("step", pa.int32(), "verify step index within the request, from 0"),
    ("batch_step_id", pa.int64(), "batched step counter of the engine (rows of one forward share it, per actor_id)"),
    ("policy", pa.string(), "policy name"),
    ("drafter", pa.string(), "drafter kind (eagle | lm | lookup | eagle+lookup | lm+lookup)"),
    ("batch_size", pa.int32(), "live sequences in this batched step"),
    ("context_len", pa.int32(), "prompt + generated tokens before the step"),
    ("num_draft_tokens", pa.int32(), "candidate nodes verified in this step (γ for a chain)"),
    ("num_accepted_tokens", pa.int32(), "nodes the target accepted: the accepted path's length"),
    ("num_emitted_tokens", pa.int32(), "tokens this step added to the output (after EOS/stop/length cuts)"),
    ("tree_depth", pa.int32(), "deepest node verified (= num_draft_tokens for a chain)"),
    ("node_parent", pa.list_(pa.int16()), "per node: parent node (0 = the root)"),
    ("node_prob", pa.list_(pa.float32()), "per node: draft probability of its token (sampled: its distribution's "
     "top-1; lookup: 1)"),
    ("node_rank", pa.list_(pa.int8()), "per node: order among its parent's head children (0 = top choice)"),
    ("node_source", pa.list_(pa.int8()), "per node: 0 the head, 1 prompt lookup"),
    ("node_match", pa.list_(pa.int16()), "per node: lookup suffix-match length (0 for head nodes)"),
    ("node_value", pa.list_(pa.float32()), "per node: the policy's estimate that it is on the accepted path"),
    ("draft_top1", pa.list_(pa.float32()), "per node: top-1 probability of the draft distribution it came from"),
    ("draft_entropy", pa.list_(pa.float32()), "per node: entropy (nats) of that distribution"),
    ("draft_accept", pa.list_(pa.bool_()), "per node: target agreed, given its parent"),
    ("draft_ms", pa.float32(), "wall ms drafting in this batched step"),
    ("verify_ms", pa.float32(), "wall ms of the target's verify forward in this batched step"),
    ("decision_ms", pa.float32(), "policy ms in this step per row served"),
    ("num_decisions", pa.int32(), "policy decisions per row in this step: its plan, one per draft depth, its cut"),
    ("draft_forwards", pa.int32(), "batched draft forwards in this step"),
    ("draft_widths", pa.list_(pa.int16()), "per batched draft forward, in order: the nodes a row it fed (a chain's: "
     "1; [] for a plain step), what its cost is read at (speckv.costs.CostModel.draft)"),
    ("max_tokens_verified", pa.int32(), "1 + the widest row's nodes: tokens per row in the verify forward"),
    ("temperature", pa.float32(), "sampling temperature (0 = greedy)"),
    ("target_dtype", pa.string(), "fp32 | bf16 | fp16 (after 'auto' was resolved)"),
    ("quantization", pa.string(), "none | int8 | nf4"),
    ("compression", pa.string(), "quantization if any, else dtype: the level the policy conditions on"),
    ("device", pa.string(), "cpu | cuda"),
    ("gamma_max", pa.int32(), "most nodes the policy could verify per row"),
    ("accept_rate", pa.float32(), "the row's head acceptance history before this step (speckv.history)"),
    ("lookup_rate", pa.float32(), "the row's lookup acceptance history before this step (speckv.history)"),
    ("actor_id", pa.string(), "which engine produced it (process / Ray actor)"),
]

STEP_SCHEMA = pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in STEP_FIELDS])

SUMMARY_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("num_spec_steps", pa.int32(), "verify steps"),
    ("num_draft_tokens", pa.int64(), "nodes verified over all steps"),
    ("num_accepted_tokens", pa.int64(), "accepted nodes over all steps"),
    ("mean_acceptance_length", pa.float32(), "(accepted + steps) / steps, bonus token included"),
    ("draft_acceptance_rate", pa.float32(), "accepted / drafted (null when nothing was drafted)"),
    ("acceptance_histogram", pa.list_(pa.int32()), "steps that accepted exactly n nodes, n = 0.."),
]

OUTPUT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("id", pa.string(), "request id (input 'id' or the line number)"),
    ("task", pa.string(), "task tag from the input"),
    ("prompt", pa.string(), "prompt text (or the chat messages as JSON)"),
    ("text", pa.string(), "generated text"),
    ("token_ids", pa.list_(pa.int32()), "generated token ids only"),
    ("num_prompt_tokens", pa.int32(), "prompt tokens after the chat template"),
    ("num_generated_tokens", pa.int32(), "len(token_ids)"),
    ("finish_reason", pa.string(), "stop | length | abort | error"),
    ("status", pa.string(), "ok | error"),
    ("error", pa.string(), "what was wrong with the row, when status is error"),
    ("policy", pa.string(), "policy name"),
    ("wall_ms", pa.float32(), "wall ms from the request's admission to its last token"),
    *SUMMARY_FIELDS,
    ("actor_id", pa.string(), "which engine produced it"),
]

OUTPUT_SCHEMA = pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in OUTPUT_FIELDS])


@dataclass
class RequestStats:
    """The one acceptance summary: counted as steps happen (a request, a Serve replica, a benchmark run), read as
    the SUMMARY_FIELDS (vLLM's names and conventions). Summaries add up: ``a + b`` covers both."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    histogram: list[int] = field(default_factory=list)

    def add(self, drafted: int, accepted: int) -> None:
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        if accepted >= len(self.histogram):
            self.histogram += [0] * (accepted + 1 - len(self.histogram))
        self.histogram[accepted] += 1

    def __add__(self, other: RequestStats) -> RequestStats:
        width = max(len(self.histogram), len(other.histogram))
        pad = [0] * width
        hist = [a + b for a, b in zip((self.histogram + pad)[:width], (other.histogram + pad)[:width])]
        return RequestStats(self.steps + other.steps, self.drafted + other.drafted, self.accepted + other.accepted, hist)

    def summary(self) -> dict:
        return {
            "num_spec_steps": self.steps,
            "num_draft_tokens": self.drafted,
            "num_accepted_tokens": self.accepted,
            "mean_acceptance_length": (self.accepted + self.steps) / self.steps if self.steps else None,
            "draft_acceptance_rate": self.accepted / self.drafted if self.drafted else None,
            "acceptance_histogram": list(self.histogram),
        }

    @classmethod
    def of(cls, summaries: list[dict]) -> RequestStats:
        """Back from SUMMARY_FIELDS (e.g. output rows) to addable counts."""
        total = cls()
        for s in summaries:
            total = total + cls(s.get("num_spec_steps") or 0, s.get("num_draft_tokens") or 0,
                                s.get("num_accepted_tokens") or 0, list(s.get("acceptance_histogram") or []))
        return total


def steps_table(rows: list[dict], metadata: dict[str, str] | None = None) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=STEP_SCHEMA)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})


def outputs_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
