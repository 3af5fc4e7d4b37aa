"""Ships the top-level kernels/ sources inside the wheel as hwnas/kernels/csrc/, and the tables of
latency_tables/ (not their validation reports) as hwnas/data/tables/ (package data).

Everything else about the build is in pyproject.toml; this only adds the copies, which
pyproject.toml cannot express for folders outside the package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNELS = Path(__file__).resolve().parent / "kernels"
TABLES = Path(__file__).resolve().parent / "latency_tables"


class BuildWithKernelSources(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "hwnas" / "kernels" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(KERNELS.iterdir()):
            if source.suffix in (".h", ".cu", ".cpp"):
                self.copy_file(str(source), str(target / source.name))
        tables = Path(self.build_lib) / "hwnas" / "data" / "tables"  # hwnas.profiling.shipped reads them
        tables.mkdir(parents=True, exist_ok=True)
        for table in sorted(TABLES.iterdir()):
            if table.suffix == ".json" and ".validation" not in table.name:  # shipped.is_table_file
                self.copy_file(str(table), str(tables / table.name))


setup(cmdclass={"build_py": BuildWithKernelSources})
