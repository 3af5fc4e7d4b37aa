"""Ships the top-level kernels/ sources inside the wheel as hwnas/kernels/csrc/ (package data).

Everything else about the build is in pyproject.toml; this only adds the copy, which
pyproject.toml cannot express for a folder outside the package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNELS = Path(__file__).resolve().parent / "kernels"


class BuildWithKernelSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "hwnas" / "kernels" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(KERNELS.iterdir()):
            if source.suffix in (".h", ".cu", ".cpp"):
                self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildWithKernelSources})
