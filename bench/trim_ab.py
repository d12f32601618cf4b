"""The cache's left crop (226b61a) against the trim before it, alternated in one process: one engine at batch 8 on
the job's prompts, generating them all once per round with `RaggedCache.trim` swapped between the two (ABBA), and
the mean cache width and row length over the batch-8 steps.

    python bench/trim_ab.py METHOD PER_TASK ROUNDS      # e.g. ar 6 4, learned+lookup 6 4

Prints each run's tok/s and widths, then new ÷ old by round. (The script as it was run for README's figures.)
"""
import sys, time, torch
from pathlib import Path
from speckv.bench.policies import method_config
from speckv.config import EngineConfig, SamplingParams
from speckv.drafters.eagle import EagleDrafter, default_eagle_path
from speckv.drafters import Drafters
from speckv.drafters.lookup import LookupDrafter
from speckv.engine import SpecEngine
from speckv.io import load_requests
from speckv.kvcache import RaggedCache
from speckv.models import EMBEDDED, load_causal_lm, load_tokenizer, resolve_spec
from speckv.collect import compression_spec
new_trim = RaggedCache.trim
def old_trim(self):
    cols = self.valid.any(dim=0).nonzero()
    end = int(cols[-1]) + 1 if len(cols) else 0
    if end < self.valid.shape[1]:
        self._index_slots(None, end)
    longest = int(self.lengths.max()) if self.valid.numel() else 0
    if self.valid.shape[1] > 2 * longest + 16:
        self.compact()
stats = {"w": 0, "l": 0, "n": 0}
def counted(fn):
    def trim(self):
        fn(self)
        if self.batch_size == 8:
            stats["w"] += self.valid.shape[1]; stats["l"] += int(self.lengths.float().mean()); stats["n"] += 1
    return trim
spec = resolve_spec(compression_spec("bf16", EMBEDDED), 8)
target, device = load_causal_lm(spec)
tok = load_tokenizer(EMBEDDED)
m = sys.argv[1]
policy, draft = method_config(m, 8)
drafter = None
if m != "ar":
    head = EagleDrafter.load(default_eagle_path(), target, device)
    drafter = Drafters([head, LookupDrafter()]) if draft.lookup else head
eng = SpecEngine(EngineConfig(target=spec, policy=policy, draft=draft, max_batch_size=8), target=target, tokenizer=tok,
                 drafter=drafter, device=device)
reqs, _ = load_requests(Path(__file__).resolve().parents[1] / "speckv/data/job_prompts.jsonl", SamplingParams(max_new_tokens=64), per_task=int(sys.argv[2]))
eng.generate(reqs[:8])
walls = {"new": [], "old": []}
for r in range(int(sys.argv[3])):
    for v in (("new", "old") if r % 2 == 0 else ("old", "new")):
        RaggedCache.trim = counted(new_trim if v == "new" else old_trim)
        stats.update(w=0, l=0, n=0)
        t = time.perf_counter(); res = eng.generate(reqs); w = time.perf_counter() - t
        toks = sum(len(x.token_ids) for x in res)
        walls[v].append(toks / w)
        print(v, "tok/s", round(toks / w, 1), "mean width", round(stats["w"] / max(stats["n"], 1)), "mean row length", round(stats["l"] / max(stats["n"], 1)), flush=True)
import statistics
ratios = [a / b for a, b in zip(walls["new"], walls["old"])]
print(m, "new/old by round", [round(x, 3) for x in ratios], "mean", round(statistics.mean(ratios), 3))
