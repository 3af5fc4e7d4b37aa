"""Where NVRTC's CUDA headers are found, and the loader's errors, on made-up installations:
the wheel layouts of CUDA 13 and 12, CUDA_HOME, cuda-pathfinder, and nothing at all."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from hwnas.errors import HwnasError
from hwnas.kernels import nvrtc


def fake_headers(folder, version: int):
    """A CUDA include folder: the fp16 header and cuda_runtime_api.h with its CUDART_VERSION."""
    folder.mkdir(parents=True)
    (folder / "cuda_fp16.h").write_text("// half\n")
    (folder / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION  {version}\n")
    return folder


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """No toolkit, no CUDA variables, no pathfinder, and only tmp_path/site on sys.path."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(nvrtc, "SYSTEM_TOOLKIT", tmp_path / "no-toolkit")
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)  # import fails
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(site)])
    return site


def test_cuda13_wheel_layout(bare):
    """CUDA 13 wheels put every header under nvidia/cu13/include (the old search missed it)."""
    include = fake_headers(bare / "nvidia" / "cu13" / "include", 13000)
    found = nvrtc.find_headers(13)
    assert (found.path, found.found_via, found.cuda_version) == (str(include), "wheel (CUDA 13)", "13.0")


def test_cuda12_wheel_layout(bare):
    include = fake_headers(bare / "nvidia" / "cuda_runtime" / "include", 12090)
    found = nvrtc.find_headers(12)
    assert (found.path, found.found_via, found.cuda_version) == (str(include), "wheel (CUDA 12)", "12.9")


@pytest.mark.parametrize("major", [12, 13])
def test_headers_of_nvrtcs_major_version_win(bare, tmp_path, monkeypatch, major):
    """Both majors installed, and a toolkit of the other: the headers must match the compiler."""
    cu13 = fake_headers(bare / "nvidia" / "cu13" / "include", 13020)
    cu12 = fake_headers(bare / "nvidia" / "cuda_runtime" / "include", 12080)
    toolkit = tmp_path / "toolkit"
    fake_headers(toolkit / "include", 12040 if major == 13 else 13000)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert nvrtc.find_headers(major).path == str(cu13 if major == 13 else cu12)


def test_cuda_home_and_the_system_toolkit(bare, tmp_path, monkeypatch):
    toolkit = tmp_path / "toolkit"
    fake_headers(toolkit / "include", 13010)
    system = tmp_path / "usr-local-cuda"
    fake_headers(system / "include", 13000)
    monkeypatch.setattr(nvrtc, "SYSTEM_TOOLKIT", system)
    assert nvrtc.find_headers(13).found_via == str(system)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert (nvrtc.find_headers(13).path, nvrtc.find_headers(13).found_via) == (str(toolkit / "include"), "CUDA_HOME")


def test_cuda_pathfinder_is_asked_first(bare, tmp_path, monkeypatch):
    located = fake_headers(tmp_path / "conda" / "include", 13000)
    calls = []

    def locate(libname):
        calls.append(libname)
        return SimpleNamespace(abs_path=str(located), found_via="conda")

    monkeypatch.setitem(sys.modules, "cuda.pathfinder", SimpleNamespace(locate_nvidia_header_directory=locate))
    fake_headers(bare / "nvidia" / "cu13" / "include", 13000)
    found = nvrtc.find_headers(13)
    assert (found.path, found.found_via, calls) == (str(located), "cuda-pathfinder (conda)", ["cudart"])


def test_no_headers_anywhere_says_where_it_looked_and_what_to_install(bare, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda-home"))
    with pytest.raises(HwnasError) as err:
        nvrtc.find_headers(13)
    message = str(err.value)
    for place in (str(bare / "nvidia" / "cu13" / "include"), str(bare / "nvidia" / "cuda_runtime" / "include"),
                  str(tmp_path / "cuda-home" / "include"), str(tmp_path / "no-toolkit" / "include")):
        assert place in message
    assert "cuda_fp16.h" in message and "pip install 'hwnas[cuda1" in message and "CUDA_HOME" in message


@pytest.fixture
def fresh_loader():
    nvrtc.nvrtc.cache_clear()
    yield
    nvrtc.nvrtc.cache_clear()


def test_missing_bindings_name_what_to_install(fresh_loader, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    with pytest.raises(HwnasError, match=r"cuda-bindings .*pip install 'hwnas\[cuda1[23]\]'"):
        nvrtc.compile_cubin("sm_80")


def test_a_library_that_does_not_load_is_an_hwnas_error(fresh_loader, monkeypatch):
    """cuda-python 12 beside cuda-bindings 13 ended in 'Failed to dlopen libnvrtc.so.12'."""

    def version():
        raise RuntimeError("Failed to dlopen libnvrtc.so.12")

    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", SimpleNamespace(nvrtcVersion=version))
    with pytest.raises(HwnasError, match=r"NVRTC \(libnvrtc\) could not be loaded: Failed to dlopen "
                                         r"libnvrtc\.so\.12; .*pip install 'hwnas\[cuda1[23]\]'"):
        nvrtc.compile_cubin("sm_90")


def test_install_hint_follows_torchs_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "hwnas[cuda12]" in nvrtc.install_hint()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "hwnas[cuda13]" in nvrtc.install_hint()


def test_an_architecture_that_is_not_one(fresh_loader):
    with pytest.raises(HwnasError, match="sm_80 or sm_90, got '80'"):
        nvrtc.compile_cubin("80")


def nvrtc_usable() -> bool:
    try:
        nvrtc.version()
    except Exception:
        return False
    return True


@pytest.mark.skipif(not nvrtc_usable(), reason="cuda-bindings with NVRTC is not installed (pip install 'hwnas[cuda13]')")
def test_compiling_leaves_pythons_bytes_alone(fresh_loader, tmp_path):
    """NVRTC writes its log and cubin into the buffers it is given. Given bytes (b" " * size), an empty
    log (size 1) was written into CPython's shared one-byte b" ", which turned into b"\\x00" for the
    whole process: torch.load of a checkpoint saved afterwards then failed."""
    import torch

    nvrtc.compile_cubin("sm_80")
    assert bytes([32]) == b" "[:1] and bytes([32]).decode() == " "
    torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pt")
    assert torch.load(tmp_path / "w.pt", weights_only=True)["w"].tolist() == [0.0, 1.0, 2.0]
