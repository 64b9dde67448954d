"""The checks that need the model presets, the optimizer registry or torch: names, cells, devices, ranks."""

from __future__ import annotations

import functools
from pathlib import Path

from swanbench import userfiles
from swanbench.env import resolve_device
from swanbench.hints import did_you_mean
from swanbench.suite.spec import MAX_CPU_RANKS, Cell, DataSpec, Suite, fail


def check_names_and_models(suite: Suite) -> None:
    """Optimizer and model names, and the checks that need the model preset (imports torch)."""
    _check_names(suite.path, suite.cells, suite.optimizer_tables)
    _check_cells(suite.path, suite.cells)


def _check_names(path: Path, cells: tuple[Cell, ...], opt_tables: dict) -> None:
    """Model presets and optimizer names (imports swanbench.models and optimizers: after the key checks)."""
    from swanbench.models import PRESETS

    for cell in cells:
        if cell.model not in PRESETS:
            raise fail(path, "model", f"unknown model {cell.model!r}{did_you_mean(cell.model, PRESETS)}"
                        f" (see `swanbench list models`)")
    known = available_optimizers()
    names = {c.optimizer for c in cells} | set(opt_tables)
    for opt in sorted(names):
        key = optimizer_key(opt, opt_tables)
        if ":" in opt:  # "package.module:Name": imported now (never evaluated), so a wrong path runs nothing
            problem = import_path_problem(opt)
            if problem:
                raise fail(path, key, problem)
        elif opt not in known:
            why = missing_optimizers().get(opt.strip().lower())
            raise fail(path, key, f"optimizer {opt!r} {why}" if why else
                       f"unknown optimizer {opt!r}{did_you_mean(opt, known)} (see `swanbench list optimizers`)")


def optimizer_key(opt: str, opt_tables: dict) -> str:
    """The suite key naming an optimizer: its table (quoted when the name needs TOML quotes), else `optimizer`."""
    if opt not in opt_tables:
        return "optimizer"
    return f"optimizers.{opt}" if opt.replace("-", "").replace("_", "").isalnum() else f'optimizers."{opt}"'


def import_path_problem(name: str) -> str | None:
    """Why an import-path optimizer cannot be used (one line), or None: it imports and is an Optimizer
    subclass or a factory."""
    import optimizers

    try:
        optimizers.info(name)
    except ValueError as exc:
        return " ".join(str(exc).split())
    return None


def available_optimizers() -> list[str]:
    import optimizers

    return list(optimizers.available())


def missing_optimizers() -> dict[str, str]:
    """Registered optimizers that cannot be built here, with why (a package to install)."""
    import optimizers

    return dict(optimizers.missing())


def _check_cells(path: Path, cells: tuple[Cell, ...]) -> None:
    """Impossible values that depend on several fields or on the model preset."""
    from swanbench.models import PRESETS

    for cell in cells:
        preset = PRESETS[cell.model]
        if cell.seq_len > preset.max_positions:
            raise fail(path, "seq_len", f"{cell.seq_len} > {preset.max_positions}, the max positions of model {cell.model!r}")
        if cell.warmup_steps >= cell.steps:
            raise fail(path, "warmup_steps", f"{cell.warmup_steps} warm-up steps leave no timed step of {cell.steps}")
        _check_ranks(path, cell)
        try:
            vocab = data_vocab_size(cell.data, preset.vocab)
        except ValueError as exc:  # a tokenizer file that is not one: named with the file and the key
            raise fail(path, "data.tokenizer", str(exc)) from None
        if vocab is not None and vocab > preset.vocab:
            raise fail(path, "data.vocab_size", f"tokenizer vocab {vocab} > vocab {preset.vocab} of model {cell.model!r}")
        if cell.eval_tokens < cell.seq_len:
            raise fail(path, "eval_tokens", f"{cell.eval_tokens} < seq_len {cell.seq_len}: not one eval sequence")


def _check_ranks(path: Path, cell: Cell) -> None:
    """world_size > 1: a parallelism, one GPU per rank (device cuda/auto, not cuda:N), few gloo ranks on CPU."""
    if cell.world_size == 1:
        return
    if cell.parallelism is None:
        raise fail(path, "parallelism", f"world_size = {cell.world_size} needs parallelism = \"ddp\" or \"fsdp\"")
    if cell.device.startswith("cuda:"):
        raise fail(path, "device", f"{cell.device!r} with world_size = {cell.world_size}: ranks use one GPU per rank "
                    f"(cuda:0 .. cuda:{cell.world_size - 1}); use device = \"cuda\" or \"auto\"")
    if cell.device == "cpu" and cell.world_size > MAX_CPU_RANKS:
        raise fail(path, "world_size", f"{cell.world_size} gloo ranks on one CPU machine (at most {MAX_CPU_RANKS})")


def ranks_problem(cell: Cell) -> str | None:
    """Why a multi-rank cell cannot start here (not enough visible GPUs), or None."""
    if cell.world_size == 1 or not resolve_device(cell.device).startswith("cuda"):
        return None
    import torch

    visible = torch.cuda.device_count()
    if cell.world_size > visible:
        return f"world_size = {cell.world_size} needs {cell.world_size} GPUs (one per rank), {visible} visible"
    return None


def data_vocab_size(spec: DataSpec, model_vocab: int) -> int | None:
    """The tokenizer's vocabulary size where it is known without a network (None: checked at run time).

    A local tokenizer file is loaded here (ValueError, one line, when it is not one), so that a bad file
    fails the suite before anything runs instead of crashing every run."""
    if spec.tokenizer is None:
        return spec.vocab_size if spec.vocab_size is not None else default_bpe_vocab(model_vocab)
    if userfiles.is_file(spec.tokenizer):
        return _tokenizer_file_vocab(spec.tokenizer)
    return None


@functools.lru_cache(maxsize=8)
def _tokenizer_file_vocab(path: str) -> int:
    """The vocabulary (added tokens included) of a local tokenizer.json, loaded as a run loads it;
    ValueError (one line naming the file) when it is not a tokenizer file."""
    return userfiles.read_tokenizer(Path(path), ValueError).get_vocab_size(with_added_tokens=True)


def default_bpe_vocab(model_vocab: int) -> int:
    """A trained BPE defaults to the model's vocab, capped at 8192 (enough for the small embedded corpus)."""
    return min(model_vocab, 8192)


# ---------------------------------------------------------------- runtime stage

def check_runtime(suite: Suite, *, check_devices: bool = True) -> None:
    """Build each distinct (optimizer, hparams) once on a tiny model; check devices and dtypes exist."""
    import optimizers

    seen = set()
    for cell in suite.cells:
        key = (cell.optimizer, cell.hparams)
        if key in seen:
            continue
        seen.add(key)
        model = _tiny_model()
        try:
            optimizers.build(cell.optimizer, model, **cell.hparams_dict())
        except Exception as exc:  # noqa: BLE001 - whatever the build raises, these hyperparameters cannot run
            raise fail(suite.path, optimizer_key(cell.optimizer, {cell.optimizer: None}), _one_line(exc)) from None
    if check_devices:
        for device, dtype in sorted({(c.device, c.dtype) for c in suite.cells}):
            problem = device_problem(device, dtype)
            if problem:
                raise fail(suite.path, "device", problem)
        for cell in suite.cells:
            problem = ranks_problem(cell)
            if problem:
                raise fail(suite.path, "world_size", problem)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _tiny_model():
    """A 1-layer LLaMA with the same parameter names as the presets, so name-based routing is exercised."""
    from transformers import LlamaForCausalLM

    from swanbench.models import ModelPreset, llama_config

    return LlamaForCausalLM(llama_config(ModelPreset("tiny", 16, 32, 2, 1, 64, 64)))


def device_problem(device: str, dtype: str) -> str | None:
    """Why (device, dtype) cannot run here, or None."""
    import torch

    resolved = resolve_device(device)
    if resolved.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{device!r} requested but no CUDA device is visible"
        index = int(resolved.split(":")[1]) if ":" in resolved else 0
        if index >= torch.cuda.device_count():
            return f"{device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return f"bfloat16 is not supported on {torch.cuda.get_device_name(index)}"
        return None
    try:  # a CPU that cannot do a dtype fails on a tiny matmul
        x = torch.ones(4, 4, dtype=getattr(torch, dtype))
        (x @ x).sum().item()
    except (RuntimeError, TypeError) as exc:
        return f"{dtype} matmul is not supported on this CPU ({_one_line(exc)})"
    return None
