"""requirements.txt installs a torch/torchvision/xformers set that was built together.

The default suite checks the file's shape; the slow test asks the package registry what
`pip install -r requirements.txt` resolves to on Linux x86-64 for Python 3.11 and 3.12 (a dry run
with platform tags: nothing is installed) and checks that the resolved torch is the one xformers'
compiled kernels were built for (xformers/cpp_lib.json in the resolved wheel), with the CUDA major
version its _C.so links against, and inside unsloth's and unsloth_zoo's declared torch range.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from dporec import ROOT
from dporec.preflight import environment as env

REQUIREMENTS = ROOT / "requirements.txt"
# pip takes the platform tags literally (no manylinux fallbacks): list every glibc level the CUDA
# wheels use (nvidia-* are manylinux2014/_2_17/_2_27, torch _2_28).
PLATFORMS = [f"manylinux_2_{y}_x86_64" for y in (17, 24, 27, 28)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def test_torch_torchvision_xformers_are_pinned_exactly():
    """A range would let pip pick a torch that xformers was not built for (2.14.x is a CUDA 13 build)."""
    pins = env.parse_pins(REQUIREMENTS)
    for name in ("torch", "torchvision", "xformers", "unsloth", "unsloth-zoo", "torchao"):
        spec = list(pins[name].specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{name} is not pinned: {pins[name]}"
    assert pins["torch"].specifier.contains("2.10.0+cu128")  # Colab's local-label builds satisfy the pin
    text = REQUIREMENTS.read_text()
    assert "R570" in text  # the driver a user needs is stated where they install


def test_xformers_mismatch_names_the_cause():
    build = {"version": {"cuda": 1208, "torch": "2.10.0+cu128"}}
    assert env.xformers_mismatch(build, "2.10.0+cu128", "12.8") is None
    assert "libcudart.so.12" in env.xformers_mismatch(build, "2.14.1+cu130", "13.0")
    assert "not the set" in env.xformers_mismatch(build, "2.12.0+cu128", "12.8")
    assert "CPU-only" in env.xformers_mismatch(build, "2.13.0+cpu", None)


def _torch_ranges(item: dict) -> list[str]:
    """The torch specifiers a resolved package declares for Linux x86-64 (no extras)."""
    env = dict(default_environment(), sys_platform="linux", platform_system="Linux",
               platform_machine="x86_64", extra="")
    out = []
    for line in item["metadata"].get("requires_dist", []):
        req = Requirement(line)
        if req.name.lower() == "torch" and (req.marker is None or req.marker.evaluate(env)):
            out.append(str(req.specifier))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_requirements_resolve_to_a_matching_set(python, tmp_path):
    report = tmp_path / "report.json"
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *platform_args, "--python-version", python, "--implementation", "cp",
           "--only-binary=:all:", "--target", str(tmp_path / "target"), "-r", str(REQUIREMENTS)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    items = {i["metadata"]["name"].lower().replace("_", "-"): i
             for i in json.loads(report.read_text())["install"]}
    version = {name: i["metadata"]["version"] for name, i in items.items()}
    print(f"Python {python}: " + ", ".join(f"{n} {version[n]}" for n in sorted(version)
                                           if n in ("torch", "torchvision", "xformers", "triton", "unsloth",
                                                    "unsloth-zoo", "nvidia-cuda-runtime-cu12", "transformers",
                                                    "trl", "peft", "bitsandbytes")))

    pins = env.parse_pins(REQUIREMENTS)
    for name in ("torch", "torchvision", "xformers", "unsloth", "unsloth-zoo", "trl", "transformers",
                 "torchao"):
        assert pins[name].specifier.contains(version[name]), (name, version[name])
    cuda_runtimes = [n for n in version if n.startswith("nvidia-cuda-runtime-cu")]
    assert cuda_runtimes == ["nvidia-cuda-runtime-cu12"], cuda_runtimes  # a CUDA 12 torch, not a CUDA 13 one
    torch_cuda = ".".join(version["nvidia-cuda-runtime-cu12"].split(".")[:2])

    # xformers' own build record, from the wheel pip resolved
    wheel_dir = tmp_path / "xformers"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheel_dir),
                    *platform_args, "--python-version", python, "--implementation", "cp",
                    "--only-binary=:all:", f"xformers=={version['xformers']}"], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = wheel_dir.glob("xformers-*.whl")
    build = json.loads(zipfile.ZipFile(wheel).read("xformers/cpp_lib.json"))
    assert env.xformers_mismatch(build, version["torch"], torch_cuda) is None, (build, version["torch"])

    for name in ("unsloth", "unsloth-zoo", "xformers", "torchvision"):
        for spec in _torch_ranges(items[name]):
            assert Requirement(f"torch{spec}").specifier.contains(Version(version["torch"])), (name, spec)
