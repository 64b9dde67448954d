"""Shared fixtures: a private token cache, a small real-text corpus, and a suite-file writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def swanbench_cache(tmp_path_factory) -> Path:
    """Tokenizers and token caches go to a per-session folder (workers inherit it), never ~/.cache."""
    path = tmp_path_factory.mktemp("swanbench-cache")
    old = os.environ.get("SWANBENCH_CACHE")
    os.environ["SWANBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SWANBENCH_CACHE", None)
    else:
        os.environ["SWANBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A small local .txt corpus of real English text: 120 paragraphs of at least 300 characters (~100 kB)
    from the embedded Wikipedia sample, one per blank-line-separated document (no gensim needed)."""
    from swanbench.data import embedded_documents

    paragraphs = (" ".join(p.split()) for d in embedded_documents() for p in d.text.split("\n\n"))
    docs = [p for p in paragraphs if len(p) >= 300][:120]
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def write_suite(tmp_path, text_corpus):
    """write_suite(body, name="s") -> Path of a suite file; `{corpus}` in body is the small corpus path."""

    def write(body: str, name: str = "s") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(body.replace("{corpus}", str(text_corpus)))
        return path

    return write


# A tiny but complete train suite on the local corpus: nano, 4 steps, seq 32, vocab 512.
TINY_SUITE = """
name = "tiny"
[defaults]
model = "nano"
device = "cpu"
seq_len = 32
batch_size = 2
steps = 4
warmup_steps = 1
eval_every_tokens = 128
eval_tokens = 256
timeout_s = 120
[data]
source = "file"
path = "{corpus}"
vocab_size = 512
[optimizers.adamw]
lr = 1e-3
[matrix]
optimizer = ["adamw"]
seed = [0]
"""


@pytest.fixture
def tiny_suite_text() -> str:
    return TINY_SUITE


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, restored afterwards.

    Tiny tensors run fastest on one thread, and on a loaded 2-core machine two spinning OpenMP threads
    make small matmuls tens of times slower; nothing these tests check depends on the thread count.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counting_timer():
    """A `preprocess_timer` that records one entry per `with` block: (timer, entries)."""
    import contextlib

    entries: list[int] = []

    @contextlib.contextmanager
    def timer():
        entries.append(1)
        yield

    return timer, entries
