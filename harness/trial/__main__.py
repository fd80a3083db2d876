"""`python -m memft_bench.harness.trial SPEC ROW`: run one trial in this process (see worker.py)."""

from memft_bench.harness.trial.worker import main

raise SystemExit(main())
