"""Tokens for training and evaluation: an embedded corpus that needs no network, local files, and C4.

Sources (`[data] source` in a suite):

- "embedded": 105 English Wikipedia articles shipped with the package as plain text
  (`swanbench/corpus/enwiki-sample.jsonl.xz`, one JSON object {"title", "text"} per line, 0.9 MB; Wikipedia
  text is CC BY-SA 3.0 / GFDL, attribution in `swanbench/corpus/README.md`). It was made once from the sample
  gensim ships as test data (`gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-
  shortened.bz2`, 206 pages) by `build_embedded_corpus`: markup stripped with gensim's `filter_wiki`,
  redirects and pages under 500 characters dropped. Loading it needs no gensim; only rebuilding it does.
- "file": a local `.txt` (documents separated by blank lines) or `.jsonl` (one JSON object per line, text
  in `text_field`) file.
- "c4": allenai/c4 `en` streamed with `datasets` (shuffle seed 42, as in the GaLore protocol) and a hub
  tokenizer (default t5-base); for users who are online.

Split (fixed, the same for every optimizer and seed): for embedded and file sources a document goes to
validation when `sha1(key) % 100 < val_percent` (key: page title, or the document text for files); for C4
the official `validation` split is used. The tokenizer for embedded/file is a byte-level BPE trained on the
training split only, cached under `$SWANBENCH_CACHE` (default ~/.cache/swanbench) keyed by corpus hash and
vocab size, together with the token ids (numpy .npy, never pickles).

Documents are joined with an end-of-text token and cut into non-overlapping windows of `seq_len` tokens.
Training batches draw windows in an order fixed by the run's seed (epoch after epoch); the validation set
is the first `eval_tokens // seq_len` windows of the validation stream.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from swanbench import userfiles
from swanbench.suite import DataSpec, default_bpe_vocab

EOT = "<|endoftext|>"
EMBEDDED_DIR = Path(__file__).resolve().parent / "corpus"
EMBEDDED_FILE = "enwiki-sample.jsonl.xz"
# The Wikipedia dump inside gensim's test data that the embedded corpus was made from (rebuilding only).
GENSIM_WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_PAGE_CHARS = 500
# Bump when the cleaning or tokenisation changes, so stale caches are never reused.
PIPELINE_VERSION = 1


class DataError(ValueError):
    """Data that cannot be read or does not fit the run (one line)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SWANBENCH_CACHE", Path.home() / ".cache" / "swanbench"))


# ---------------------------------------------------------------- documents

@dataclass(frozen=True)
class Document:
    key: str   # what the split hashes: page title, or the text itself
    text: str


def embedded_corpus_path() -> Path:
    """The shipped embedded corpus (`swanbench/corpus/enwiki-sample.jsonl.xz`)."""
    path = EMBEDDED_DIR / EMBEDDED_FILE
    if not path.is_file():
        raise DataError(f"the embedded corpus is missing from this swanbench install ({path})")
    return path


@functools.lru_cache(maxsize=1)
def embedded_corpus_bytes() -> bytes:
    """The embedded corpus as UTF-8 JSON lines (3.1 MB decompressed; cached for the process)."""
    try:
        return lzma.decompress(embedded_corpus_path().read_bytes())
    except lzma.LZMAError as exc:
        raise DataError(f"{embedded_corpus_path()}: corrupt ({exc})") from None


@functools.lru_cache(maxsize=1)
def embedded_documents() -> tuple[Document, ...]:
    """The embedded Wikipedia sample as documents (title, plain text), in the dump's page order."""
    docs = []
    # split on "\n" only: JSON escapes it inside strings, but not every character str.splitlines() splits on
    for lineno, line in enumerate(embedded_corpus_bytes().decode("utf-8").rstrip("\n").split("\n"), 1):
        try:
            obj = json.loads(line)
            docs.append(Document(obj["title"], obj["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{embedded_corpus_path()}:{lineno}: not a {{\"title\", \"text\"}} object") from None
    return tuple(docs)


# ---------------------------------------------------------------- rebuilding the embedded corpus (gensim)

def gensim_wiki_dump_path() -> Path:
    """gensim's test-data Wikipedia dump, the source of the embedded corpus (needs gensim installed)."""
    try:
        import gensim
    except ImportError:
        raise DataError("rebuilding the embedded corpus needs gensim: pip install 'swanbench[corpus]'") from None
    path = Path(gensim.__file__).parent / "test" / "test_data" / GENSIM_WIKI_DUMP
    if not path.is_file():
        raise DataError(f"{GENSIM_WIKI_DUMP} is missing from the installed gensim ({path})")
    return path


def clean_wiki(markup: str) -> str:
    """Plain text from wiki markup: gensim's filter_wiki, then bold/italic quotes and blank runs removed."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wiki_dump_documents(path: str | Path) -> tuple[Document, ...]:
    """Articles of a Wikipedia XML dump (.bz2) as documents: redirects and pages under 500 characters dropped.

    Uses gensim's page extraction and markup filter (about 2.5 s for gensim's sample).
    """
    from gensim.corpora.wikicorpus import extract_pages

    docs = []
    with bz2.open(path, "rb") as fh:
        for title, markup, _pageid in extract_pages(fh):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            text = clean_wiki(markup)
            if len(text) >= MIN_PAGE_CHARS:
                docs.append(Document(title, text))
    return tuple(docs)


def documents_jsonl(docs: Sequence[Document]) -> bytes:
    """Documents as the embedded corpus's JSON lines ({"title", "text"}, UTF-8, one per line)."""
    return "".join(json.dumps({"title": d.key, "text": d.text}, ensure_ascii=False) + "\n" for d in docs).encode()


def build_embedded_corpus(out: str | Path | None = None) -> Path:
    """Rebuild `swanbench/corpus/enwiki-sample.jsonl.xz` from gensim's dump (a maintainer's step; needs gensim)."""
    out = Path(out) if out is not None else EMBEDDED_DIR / EMBEDDED_FILE
    blob = documents_jsonl(wiki_dump_documents(gensim_wiki_dump_path()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    return out


def file_documents(path: str | Path, text_field: str = "text") -> list[Document]:
    """Documents of a local .txt (blank-line separated) or .jsonl (one object per line) file."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    if path.suffix == ".jsonl":
        texts = [_jsonl_text(path, i, line, text_field) for i, line in enumerate(raw.splitlines(), 1) if line.strip()]
    else:
        texts = [t.strip() for t in re.split(r"\n\s*\n", raw)]
    docs = [Document(t, t) for t in texts if t]
    if not docs:
        raise DataError(f"{path}: no text found")
    return docs


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        raise DataError(f"{path}:{lineno}: no string field {text_field!r}")
    return obj[text_field]


def split_documents(docs: Sequence[Document], val_percent: int) -> tuple[list[Document], list[Document]]:
    """Fixed train/validation split by a stable hash of each document's key (sha1, not Python's hash)."""
    train, val = [], []
    for doc in docs:
        bucket = int(hashlib.sha1(doc.key.encode("utf-8")).hexdigest(), 16) % 100
        (val if bucket < val_percent else train).append(doc)
    if not train or not val:
        raise DataError(f"split of {len(docs)} documents at {val_percent}% left an empty "
                        f"{'training' if not train else 'validation'} set; add documents")
    return train, val


# ---------------------------------------------------------------- tokenizers

def train_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style, with an end-of-text token) trained on `texts`: seconds on 2 cores."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class Encoder:
    """A uniform `encode(texts) -> list[list[int]]`, `eot_id` and `vocab_size` over tokenizers and HF tokenizers."""

    def __init__(self, encode: Callable[[list[str]], list[list[int]]], eot_id: int, vocab_size: int, name: str):
        self.encode, self.eot_id, self.vocab_size, self.name = encode, eot_id, vocab_size, name

    @classmethod
    def from_tokenizers(cls, tok, name: str) -> "Encoder":
        eot = tok.token_to_id(EOT)
        if eot is None:  # a user's tokenizer.json without our end-of-text token: use its last id
            eot = tok.get_vocab_size() - 1
        return cls(lambda texts: [e.ids for e in tok.encode_batch(texts)], eot, tok.get_vocab_size(), name)

    @classmethod
    def from_hub(cls, name: str) -> "Encoder":
        """A hub tokenizer through transformers (needs the network or a populated HF cache)."""
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name)
        eot = hf.eos_token_id if hf.eos_token_id is not None else len(hf) - 1
        return cls(lambda texts: hf(texts, add_special_tokens=False)["input_ids"], eot, len(hf), name)


def load_encoder(spec: DataSpec, train_docs: list[Document] | None, corpus_key: str, model_vocab: int) -> Encoder:
    """The run's tokenizer: a local tokenizer.json, a hub name, or a BPE trained on the training split (cached)."""
    from tokenizers import Tokenizer

    if spec.tokenizer and userfiles.is_file(spec.tokenizer):  # DataError (one line) when it is not a tokenizer
        return Encoder.from_tokenizers(userfiles.read_tokenizer(Path(spec.tokenizer), DataError), spec.tokenizer)
    if spec.tokenizer:
        return Encoder.from_hub(spec.tokenizer)
    vocab = spec.vocab_size or default_bpe_vocab(model_vocab)
    path = cache_dir() / "tokenizers" / f"{corpus_key}-bpe{vocab}.json"
    if not path.is_file():
        if train_docs is None:
            raise DataError("a BPE can only be trained on a local corpus; give [data] tokenizer for C4")
        tok = train_bpe((d.text for d in train_docs), vocab)
        _atomic_write_text(path, tok.to_str())
    return Encoder.from_tokenizers(Tokenizer.from_file(str(path)), f"bpe{vocab}:{corpus_key}")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # concurrent runs may race; the last rename wins with identical content


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


# ---------------------------------------------------------------- token streams

def pack(encoded: list[list[int]], eot_id: int) -> np.ndarray:
    """One stream: each document's ids followed by the end-of-text id (int32)."""
    total = sum(len(ids) + 1 for ids in encoded)
    out = np.empty(total, dtype=np.int32)
    pos = 0
    for ids in encoded:
        out[pos:pos + len(ids)] = ids
        out[pos + len(ids)] = eot_id
        pos += len(ids) + 1
    return out


def windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows [n, seq_len] of a token stream (the tail shorter than seq_len is dropped)."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


@dataclass
class TokenData:
    """Tokenised validation stream and training tokens (int32 ids), and the tokenizer that made them.

    Local sources hold the whole training stream in `train`; C4 streams it (`train` is None and
    `train_texts` yields documents, encoded as the run consumes them).
    """

    train: np.ndarray | None
    val: np.ndarray
    vocab_size: int
    tokenizer: str
    source: str
    train_texts: Callable[[], Iterator[str]] | None = None
    encoder: Encoder | None = None
    model_vocab: int | None = None

    def val_batches(self, seq_len: int, eval_tokens: int, batch_size: int) -> list[np.ndarray]:
        """The fixed validation set: the first eval_tokens // seq_len windows, in batches of batch_size."""
        wins = windows(self.val, seq_len)
        n = eval_tokens // seq_len
        if n > len(wins):
            raise DataError(f"eval_tokens {eval_tokens} > the {len(wins) * seq_len} validation tokens "
                            f"available at seq_len {seq_len}; lower eval_tokens")
        return [wins[i:min(i + batch_size, n)] for i in range(0, n, batch_size)]

    def train_batches(self, seq_len: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
        """Endless [batch_size, seq_len] batches: local windows shuffled per epoch by `seed`, or the C4 stream."""
        if self.train is None:
            return self._stream_batches(seq_len, batch_size)
        return self._shuffled_batches(seq_len, batch_size, seed)

    def _shuffled_batches(self, seq_len: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
        wins = windows(self.train, seq_len)
        if len(wins) < batch_size:
            raise DataError(f"only {len(wins)} training windows of {seq_len} tokens; batch_size {batch_size} needs more")
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(wins))
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield wins[order[i:i + batch_size]]

    def _stream_batches(self, seq_len: int, batch_size: int, chunk_docs: int = 256) -> Iterator[np.ndarray]:
        """Batches in stream order (C4 is shuffled by the dataset with shuffle_seed), encoded chunk by chunk."""
        need = seq_len * batch_size
        buffer = np.empty(0, dtype=np.int32)
        for texts in _chunks(self.train_texts(), chunk_docs):
            buffer = np.concatenate([buffer, self._encode_checked(texts)])
            while len(buffer) >= need:
                yield buffer[:need].reshape(batch_size, seq_len)
                buffer = buffer[need:]
        raise DataError("the training stream ended before the run did")

    def _encode_checked(self, texts: list[str]) -> np.ndarray:
        ids = pack(self.encoder.encode(texts), self.encoder.eot_id)
        if self.model_vocab is not None and len(ids) and int(ids.max()) >= self.model_vocab:
            raise DataError(f"token id {int(ids.max())} from tokenizer {self.tokenizer} does not fit "
                            f"the model's vocab {self.model_vocab}")
        return ids


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def corpus_key(spec: DataSpec) -> str:
    """A short hash of the corpus bytes, the split and the pipeline version (the cache key)."""
    h = hashlib.sha256(f"v{PIPELINE_VERSION}:{spec.source}:{spec.val_percent}:{spec.text_field}".encode())
    if spec.source == "embedded":  # the documents themselves, whatever compressor stored them
        h.update(embedded_corpus_bytes())
        return f"{spec.source}-{h.hexdigest()[:12]}"
    with open(spec.path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{spec.source}-{h.hexdigest()[:12]}"


def load_local(spec: DataSpec, model_vocab: int) -> TokenData:
    """Embedded or file source: documents -> fixed split -> tokenizer -> cached token streams."""
    key = corpus_key(spec)
    docs = None
    if spec.tokenizer is None:
        tok_tag = f"bpe{spec.vocab_size or default_bpe_vocab(model_vocab)}"
    else:  # a tokenizer file is keyed by its content, a hub name by the name
        source = Path(spec.tokenizer).read_bytes() if userfiles.is_file(spec.tokenizer) else spec.tokenizer.encode()
        tok_tag = "tok-" + hashlib.sha256(source).hexdigest()[:8]
    paths = {s: cache_dir() / "tokens" / f"{key}-{tok_tag}-{s}.npy" for s in ("train", "val")}
    need_docs = not all(p.is_file() for p in paths.values()) or (
        spec.tokenizer is None and not (cache_dir() / "tokenizers" / f"{key}-{tok_tag}.json").is_file())
    if need_docs:
        docs = embedded_documents() if spec.source == "embedded" else file_documents(spec.path, spec.text_field)
        train_docs, val_docs = split_documents(docs, spec.val_percent)
    encoder = load_encoder(spec, train_docs if docs else None, key, model_vocab)
    if docs:
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            _atomic_save_npy(paths[split], pack(encoder.encode([d.text for d in split_docs]), encoder.eot_id))
    train = np.load(paths["train"], allow_pickle=False)
    val = np.load(paths["val"], allow_pickle=False)
    return TokenData(train, val, encoder.vocab_size, encoder.name, spec.source)


# ---------------------------------------------------------------- C4 (online)

def c4_documents(split: str, shuffle_seed: int, load_dataset: Callable | None = None) -> Iterator[str]:
    """Texts of allenai/c4 `en` streamed through `datasets` (train shuffled with `shuffle_seed`).

    `load_dataset` defaults to `datasets.load_dataset`; tests pass a local stand-in with the same call shape.
    """
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError:
            raise DataError("source = \"c4\" needs the `datasets` package: pip install 'swanbench[online]'") from None
    ds = load_dataset("allenai/c4", "en", split=split, streaming=True)
    if split == "train":
        ds = ds.shuffle(seed=shuffle_seed, buffer_size=10_000)
    for example in ds:
        yield example["text"]


def stream_tokens(texts: Iterable[str], encoder: Encoder, n_tokens: int, chunk_docs: int = 256) -> np.ndarray:
    """The first `n_tokens` of a packed token stream of `texts`, encoding `chunk_docs` documents at a time."""
    parts, have, buffer = [], 0, []
    for text in texts:
        buffer.append(text)
        if len(buffer) == chunk_docs:
            parts.append(pack(encoder.encode(buffer), encoder.eot_id))
            have += len(parts[-1])
            buffer = []
            if have >= n_tokens:
                break
    if have < n_tokens and buffer:
        parts.append(pack(encoder.encode(buffer), encoder.eot_id))
    stream = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
    if len(stream) < n_tokens:
        raise DataError(f"the stream ended after {len(stream)} tokens; {n_tokens} needed")
    return stream[:n_tokens]


def load_c4(spec: DataSpec, val_tokens: int, model_vocab: int | None = None,
            load_dataset: Callable | None = None) -> TokenData:
    """C4 for one run: the validation budget tokenised up front, the training stream encoded as consumed."""
    encoder = load_encoder(spec, None, "c4", 0)  # a local tokenizer.json or a hub name
    val = stream_tokens(c4_documents("validation", spec.shuffle_seed, load_dataset), encoder, val_tokens)
    return TokenData(None, val, encoder.vocab_size, encoder.name, "c4",
                     train_texts=lambda: c4_documents("train", spec.shuffle_seed, load_dataset),
                     encoder=encoder, model_vocab=model_vocab)


def load_data(spec: DataSpec, *, model_vocab: int, val_tokens: int) -> TokenData:
    """Token streams for a run; val_tokens: the validation tokens it needs (sizes the C4 validation stream)."""
    if spec.source == "c4":
        data = load_c4(spec, val_tokens, model_vocab)
    else:
        data = load_local(spec, model_vocab)
    top = int(max(data.train.max(initial=0) if data.train is not None else 0, data.val.max(initial=0)))
    if top >= model_vocab:
        raise DataError(f"token id {top} from tokenizer {data.tokenizer} does not fit the model's vocab {model_vocab}")
    return data
