"""Packaging glue that pyproject.toml cannot express: the repository's top-level folders are installed
under one import name of our own, `memft_bench.<folder>`.

Why not `import harness` / `import kernels`: those names belong to other distributions (Hugging Face's
`kernels`, which transformers imports; `harness` on the package registry), and a folder with an
`__init__.py` at the repository root would shadow them for every process started there. So the folders
are plain directories (PEP 420 namespace portions, no `__init__.py`) mapped to `memft_bench.harness`,
`memft_bench.methods`, `memft_bench.kernels` and `memft_bench.suites`; every subpackage is found, not listed.
"""

from setuptools import find_namespace_packages, setup

IMPORT_ROOT = "memft_bench"
FOLDERS = ("harness", "methods", "kernels", "suites")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for folder in FOLDERS:
        found = find_namespace_packages(where=folder, exclude=["__pycache__", "*.__pycache__"])
        packages += [f"{IMPORT_ROOT}.{folder}", *(f"{IMPORT_ROOT}.{folder}.{sub}" for sub in found)]
        package_dir[f"{IMPORT_ROOT}.{folder}"] = folder
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir, package_data={f"{IMPORT_ROOT}.suites": ["*.yaml"]})
