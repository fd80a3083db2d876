"""Where task data and model weights come from: prompts, synthetic task generators, the commonsense files,
pinned downloads and pretrained weights. Imports only `core`; no torch at import.
"""
