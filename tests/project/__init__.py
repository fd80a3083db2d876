"""Tests of The project as a whole: import names, layers, the GPU acceptance script."""
