"""hwnas's version: its one home, read by the package root, pyproject.toml and every module that
records it (tables, ONNX metadata), so none of them imports the package root for it."""

__version__ = "0.1.0"
