"""The embedded corpus, data only: `enwiki-sample.jsonl.xz` (read by `swanbench.data`) and its attribution
(README.md)."""
