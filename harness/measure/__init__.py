"""The meters: memory (allocator, NVML, RSS, exact accounting), step timing and the environment
(hardware and package versions). Imports the layers below only.
"""
