"""Inside a run: the third stage of the flow (suite -> launch -> run -> measure -> analyse).

- `worker`: the process entry point, `python -m swanbench.run.worker RUN_DIR` (one per rank under torchrun);
- `train`: the training loop of one (cell, seed), measured by `swanbench.trackers.RunMeter`;
- `evaluate`: validation losses (token-weighted and GaLore-compatible);
- `ranks`: what each rank of a multi-process cell does (process group, DDP/FSDP2, data sharding).

Nothing here imports the launching or analysis side: a run only knows its own folder (`swanbench.rundir`).
"""
