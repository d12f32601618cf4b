"""What the machine allows, said where a user looks: the batch job's final summary and ``speckv bench``.

Machines of the same size differ (speckv.hardware), so every figure names its CPU, and when the selector keeps
speculation off the summary says why, from the costs it measured. The record is also written into each telemetry
file's schema metadata (``speckv.io.MACHINE_KEY``), so telemetry says where it was measured.
"""

from __future__ import annotations

import torch

from speckv.hardware import cpu_capability, cpu_name

TOKENS = (1, 5, 9)


def machine_record(engine) -> dict:
    """The machine and what it measured: CPU, threads, the target's dtype, the calibrated verify-cost curve."""
    record = {
        "device": engine.device.type,
        "cpu": cpu_name(),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "target_dtype": engine.target_spec.dtype,
        "dtype_requested": engine.config.target.dtype,
        "compression": engine.target_spec.compression,
        "drafter": getattr(engine.drafter, "kind", "none"),
        "int8_draft_rows": getattr(engine.drafter, "int8_rows", 0),  # draft forwards up to this many rows use int8
        "batch_size": engine.config.max_batch_size,
    }
    if engine.device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(engine.device)
    if engine.costs is not None:
        calibrated = engine.costs.calibrated
        record["verify_ratio"] = {str(b): {str(t): round(r, 3) for t, r in calibrated.ratios(b, TOKENS).items()}
                                  for b in sorted({1, engine.config.max_batch_size})}
        record["verify_ms"] = {str(b): round(calibrated.verify(b, 1), 2) for b in sorted({1, engine.config.max_batch_size})}
        record["draft_ms"] = {str(b): round(calibrated.draft(b), 2) for b in sorted({1, engine.config.max_batch_size})}
    return record


def where(record: dict) -> str:
    """One line naming the machine a figure was measured on."""
    if record.get("device") == "cuda":
        return f"{record.get('gpu', 'CUDA')}, target {record['target_dtype']}"
    chosen = " (dtype auto: measured fastest here)" if record.get("dtype_requested") == "auto" else ""
    return (f"{record['cpu']} (CPU capability usage: {record['cpu_capability']}), {record['threads']} threads, "
            f"target {record['target_dtype']}{chosen}")


def summary_lines(record: dict, nodes_per_step: float | None = None) -> list[str]:
    """The machine line, the verify-cost curve, and — when speculation stayed (almost) off — why."""
    lines = [f"machine: {where(record)}"]
    ratios = record.get("verify_ratio")
    if ratios:
        curve = "; ".join(f"batch {b}: " + ", ".join(f"{t} tokens {r:.2f}×" for t, r in row.items() if t != "1")
                          for b, row in ratios.items())
        lines.append(f"verify cost relative to 1 token (calibrated): {curve}")
        if nodes_per_step is not None and nodes_per_step < 0.05:
            batch = str(record["batch_size"]) if str(record["batch_size"]) in ratios else "1"
            five = ratios[batch]["5"]
            lines.append(f"speculation stayed off (mean {nodes_per_step:.3f} nodes per step): verifying 5 tokens costs "
                         f"{five:.1f}× one on this machine at batch {batch}, so plain decoding is faster here")
    return lines
