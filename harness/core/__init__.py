"""The lowest layer: errors, option dataclasses, precision names, the cache directory, timestamps and
atomic writes, fingerprints and tensor byte counts. Imports nothing else of the project, and no torch at import.
"""
