"""The parent process: planning trials, resolving state budgets, devices, the trial process, the local and
Slurm executors and the Slurm ledger, the pre-flight, estimates and the runner that writes every row.
"""
