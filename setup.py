"""The one build step pyproject.toml cannot declare: the wheel ships the repository's data_manifests/*.yaml and
notebooks/*.ipynb inside the package, as histokit/_shipped/ (histokit.paths reads them there when histokit is not
run from a clone), so `pip install histokit` works outside the repository. Everything else is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"data_manifests": "*.yaml", "notebooks": "*.ipynb"}


class BuildPyWithShipped(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "histokit" / "_shipped"
        for folder, pattern in SHIPPED.items():
            files = sorted((ROOT / folder).glob(pattern))
            if not files:
                raise SystemExit(f"setup.py: no {folder}/{pattern} to ship: build from a full checkout or sdist")
            (target / folder).mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, target / folder / path.name)


setup(cmdclass={"build_py": BuildPyWithShipped})
