"""Hydra entry point for runs and sweeps: the same job as `pflash-run` (pflash_jax/run.py).

    python experiments/run.py                          # one run, embedded tiny pair
    python experiments/run.py -m experiment=smoke      # a sweep; every job times full prefill too
    python experiments/report.py outputs/multirun/smoke  # tables + plots from the metrics files
"""

from pflash_jax.run import main

if __name__ == "__main__":
    main()
