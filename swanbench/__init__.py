"""swanbench: a benchmarking and memory-profiling harness for LLM optimizers.

The public API for your own code (`swanbench.api`), imported on first access so that `import swanbench`
stays light: `build_model`, `RunRecorder`, `SwanbenchCallback`, `load`, `Tables`, `RunMeter`.
"""

__version__ = "0.1.0"

PUBLIC = ("build_model", "RunRecorder", "SwanbenchCallback", "load", "Tables", "RunMeter")
__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str):
    # importlib, not an import statement: submodules import this package for __version__, and it must
    # import none of them at load time (tests/test_architecture.py).
    if name in PUBLIC:
        import importlib

        return importlib.import_module("swanbench.api").resolve(name)
    raise AttributeError(f"module 'swanbench' has no attribute {name!r}")
