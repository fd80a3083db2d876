"""Result rows and their file (`results.jsonl`: schema, append, repair, read) and per-item predictions.
Imports only `core`.
"""
