"""Probe: would a packed verify forward (only real tokens through the linear layers) make batch-8 lookup pay here?

The engine's verify forward is padded: every row gets the widest row's width. This probe times, interleaved on
the embedded target over a 200-token cache, at batch 8:

* ``plain``  — 1 token per row (a plain decoding step);
* ``pad3``   — 3 tokens per row (24 tokens, all real);
* ``pad9``   — 9 slots per row, two rows with 9 real tokens and six with 1 (24 real of 72), padded as the engine runs it;
* ``pack9``  — the same input with every linear layer of the decoder (attention projections, MLP) and the LM head
  applied to the 24 real tokens only, scattered back (attention itself still sees the padded width).

    python bench/packed_verify_probe.py --repeats 10 > bench/results/packed_verify_probe.md

Not part of the engine: it patches the loaded model's modules in this process only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from speckv.config import EngineConfig
from speckv.engine import SpecEngine
from speckv.kvcache import RaggedCache
from speckv.proposal import Proposal
from speckv.report import machine_record, where

ROWS, CONTEXT = 8, 200


class Packed(torch.nn.Module):
    """``inner`` applied to the rows of the flattened input named by ``Packed.index`` (all rows when None)."""

    index: torch.Tensor | None = None

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if Packed.index is None:
            return self.inner(x)
        flat = x.reshape(-1, x.shape[-1])
        y = self.inner(flat.index_select(0, Packed.index))
        out = y.new_zeros(flat.shape[0], y.shape[-1]).index_copy_(0, Packed.index, y)
        return out.view(*x.shape[:-1], y.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    engine = SpecEngine(EngineConfig())
    decoder, head = engine.target.get_decoder(), engine.target.get_output_embeddings()
    for layer in decoder.layers:
        layer.mlp = Packed(layer.mlp)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, name, Packed(getattr(layer.self_attn, name)))
    gen = torch.Generator().manual_seed(0)
    cache = RaggedCache(ROWS, engine.device)
    prompt = torch.randint(100, engine.vocab_size, (ROWS, CONTEXT), generator=gen)
    with torch.inference_mode():
        engine.target_forward(cache, prompt, torch.ones_like(prompt, dtype=torch.bool))

    @torch.inference_mode()
    def forward(slots: int, real: list[int], packed: bool) -> float:
        ids = torch.randint(100, engine.vocab_size, (ROWS, slots), generator=gen)
        valid = torch.arange(slots)[None, :] < torch.tensor(real)[:, None]
        attend = torch.cat([torch.ones(ROWS, slots, cache.valid.shape[1], dtype=torch.bool),
                            Proposal.chain(ids[:, 1:]).ancestors()], dim=2)
        Packed.index = valid.reshape(-1).nonzero().squeeze(1) if packed else None
        start = time.perf_counter()
        hidden = decoder(**cache.model_inputs(ids, valid, attend, cache.lengths[:, None] + torch.arange(slots)))
        hidden = hidden.last_hidden_state
        if packed:
            logits = hidden.new_zeros(ROWS, slots, head.weight.shape[0])
            logits[valid] = head(hidden[valid])
        else:
            head(hidden)
        elapsed = (time.perf_counter() - start) * 1e3
        Packed.index = None
        cache.keep_last(torch.zeros(ROWS, slots, dtype=torch.bool))
        cache.trim()
        return elapsed

    two_long = [9, 9] + [1] * (ROWS - 2)
    shapes = {"plain": (1, [1] * ROWS, False), "pad3": (3, [3] * ROWS, False),
              "pad9": (9, two_long, False), "pack9": (9, two_long, True)}
    times: dict[str, list[float]] = {name: [] for name in shapes}
    for rep in range(args.repeats + 2):
        for name, (slots, real, packed) in shapes.items():
            ms = forward(slots, real, packed)
            if rep >= 2:  # two warm-up rounds
                times[name].append(ms)
    plain = np.array(times["plain"])
    print(f"`python bench/packed_verify_probe.py --repeats {args.repeats}` — batch {ROWS}, {CONTEXT}-token cache, "
          f"{time.strftime('%Y-%m-%d')}; {where(machine_record(engine))}\n")
    print("| forward | real tokens | ms (median) | × plain (median of paired ratios) |")
    print("|---|---|---|---|")
    for name, (slots, real, _) in shapes.items():
        ratio = statistics.median(np.array(times[name]) / plain)
        print(f"| {name} | {sum(real)} of {slots * ROWS} | {statistics.median(times[name]):.1f} | {ratio:.2f} |")
    pack_vs_pad = statistics.median(np.array(times["pack9"]) / np.array(times["pad9"]))
    print(f"\npack9 ÷ pad9 (median of paired ratios over {args.repeats} rounds): {pack_vs_pad:.2f}")


if __name__ == "__main__":
    main()
