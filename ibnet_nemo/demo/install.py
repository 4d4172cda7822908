"""What the demo needs beyond the project's own install: Debian packages (TTS voices, the real test speech) and
the ``demo`` Python extra (matplotlib, for the plot). Installs only what is missing, so a second run does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["APT_PACKAGES", "PYTHON_MODULES", "ensure_requirements", "missing_apt_packages", "missing_python_modules"]

#: Debian packages: the TTS engines and English voices, and the real test recordings with their transcripts.
APT_PACKAGES = (
    "flite",
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-us-slt-hts",
    "espeak-ng",
    "asterisk-core-sounds-en",
    "asterisk-core-sounds-en-wav",
)
#: Modules of the ``demo`` extra in setup.cfg.
PYTHON_MODULES = ("matplotlib",)
_REPO = Path(__file__).resolve().parents[2]


def missing_apt_packages(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    """The ``packages`` that ``dpkg -s`` does not report as installed (all of them when there is no dpkg)."""
    if shutil.which("dpkg") is None:
        return list(packages)
    missing = []
    for package in packages:
        result = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True)
        if result.returncode != 0 or "Status: install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def missing_python_modules(modules: tuple[str, ...] = PYTHON_MODULES) -> list[str]:
    """The ``modules`` this interpreter cannot import."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def _install_apt(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        raise SystemExit(
            "The demo needs these Debian/Ubuntu packages and apt-get is not available here:\n  "
            + " ".join(packages)
            + "\nInstall the equivalent TTS voices and Asterisk English prompts by hand, then run `make demo` again."
        )
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(f"Installing Debian packages needs root. Run as root:\n  {' '.join(command)}")
        command = ["sudo", *command]
    print(f"Installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env).returncode != 0:
        print("apt-get install failed; updating the package lists and trying once more")
        update = ["sudo", "apt-get", "update"] if command[0] == "sudo" else ["apt-get", "update"]
        subprocess.run(update, env=env, check=False)
        if subprocess.run(command, env=env).returncode != 0:
            raise SystemExit(f"Could not install the demo's Debian packages; try by hand:\n  {' '.join(command)}")


def ensure_requirements() -> None:
    """Install the missing Debian packages (``apt-get``) and the ``demo`` extra (pip into this environment).

    Raises:
        SystemExit: something is missing and cannot be installed here (the message says what to do).
    """
    packages = missing_apt_packages()
    if packages:
        _install_apt(packages)
    modules = missing_python_modules()
    if modules:
        print(f"Installing the demo's Python extra ({', '.join(modules)}) into {sys.prefix}")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "-c", str(_REPO / "requirements.lock"),
                   "-e", f"{_REPO}[demo]"]  # fmt: skip
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"Could not install the demo's Python extra; try by hand:\n  {' '.join(command)}")
