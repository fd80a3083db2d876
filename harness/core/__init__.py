"""The lowest layer: errors, option dataclasses, precision names, the cache directory, timestamps and
atomic writes, fingerprints, tensor byte counts and the statistics (intervals and tests, numpy only) that
both the report and the trackers use. Imports nothing else of the project, and no torch at import.
"""
