"""Build hook only; all metadata is in pyproject.toml.

training/cli.py and generation/cli.py read their default config from ``<dir of the package>/../params_*.yml``,
i.e. beside the top-level CLI modules. In the repository that is the repo root; in an installed wheel it is
site-packages, so ``build_py`` copies the three YAML files into the build's top level. (Editable installs
run from the source tree and find them there.)
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = ["params_contrastive.yml", "params_generative.yml", "params_baseline.yml"]


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in CONFIGS:
            self.copy_file(str(Path(__file__).parent / name), str(Path(self.build_lib) / name))

    def get_outputs(self, include_bytecode=True):
        outs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outs
        return outs + [str(Path(self.build_lib) / n) for n in CONFIGS]


setup(cmdclass={"build_py": BuildPyWithConfigs})
