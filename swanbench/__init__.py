"""swanbench: a benchmarking and memory-profiling harness for LLM optimizers."""

__version__ = "0.1.0"
