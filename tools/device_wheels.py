"""The wheels the GPU machine's image lacks, built here and installed there (standard library only).

The GPU machine (Python 3.12, x86_64, no network) runs our code under its own JAX, torch and
transformers; what it lacks travels as wheels in the ignored folder `.whl/` (the device tool's
`carry`). Here, with the project's virtualenv (its versions are the ones carried):

    .venv/bin/python tools/device_wheels.py download          # fills .whl/ (pip download, py3.12 manylinux)

There, before anything imports the package (so this file imports nothing of it):

    python3 tools/device_wheels.py install --target=/tmp/site && export PYTHONPATH=/tmp/site:$PWD

`install` installs every wheel of `MISSING` (absent from the image), and each of `PINNED`
(pure-Python, ours) only where the image's version is older than our minimum in setup.cfg or absent,
and can import under the image's JAX (`BREAKS_UNDER_JAX`); it prints what it chose and why.
docs/performance.md has the whole device command.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
# Absent from the GPU image (/work/.library/device/KINDS.md lists its packages), with what they need
# that it lacks too: audio decoding (librosa, soundfile, soxr), the input pipeline (grain), configs,
# TensorBoard logs, WER.
MISSING = (
    "librosa",
    "audioread",
    "decorator",
    "pooch",
    "platformdirs",
    "soundfile",
    "cffi",
    "pycparser",
    "soxr",
    "grain",
    "array-record",
    "portpicker",
    "ml-collections",
    "tensorboardX",
    "jiwer",
    "rapidfuzz",
)
# The image has these; ours are carried for when its version is older than our minimum.
PINNED = ("flax", "optax", "orbax-checkpoint", "chex")
# Carried versions that can't import under newer JAX: (distribution, its last such version, the
# JAX version from which it breaks, why). flax <= 0.12.8 subclasses `jax.experimental.hijax`'s
# QDD types, which JAX removed after 0.11.0 ("remove qdd"); flax 0.12.9 dropped them.
BREAKS_UNDER_JAX = (("flax", "0.12.8", "0.11.1", "subclasses hijax types JAX 0.11.1 removed; needs flax >= 0.12.9"),)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def normalise(name: str) -> str:
    """PEP 503's form of a distribution name (`ml_collections` and `ML-Collections` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numbers of a version (`0.12.8rc1` -> (0, 12, 8)), enough to compare releases."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def minimum_versions(setup_cfg: pathlib.Path = REPO / "setup.cfg") -> dict[str, str]:
    """`install_requires`' `name>=version` lines of setup.cfg, by normalised name."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    found = {}
    for line in parser["options"]["install_requires"].splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([\w.]+)", line)
        if match:
            found[normalise(match.group(1))] = match.group(2)
    return found


def carried_versions() -> dict[str, str]:
    """The version to carry of each wheel: requirements.txt's pin, else this environment's version."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([\w.]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return {name: pins.get(normalise(name)) or importlib.metadata.version(name) for name in (*MISSING, *PINNED)}


def download(folder: pathlib.Path = WHEELS) -> list[str]:
    """`pip download`s each wheel (no dependencies: the lists above are complete) for CPython 3.12 on
    x86_64 Linux into `folder`; returns the pip commands run."""
    folder.mkdir(exist_ok=True)
    commands = []
    for name, version in carried_versions().items():
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version=3.12",
            "--implementation=cp",
            *platforms,
            "-d",
            str(folder),
            f"{name}=={version}",
        ]
        subprocess.run(command, check=True)
        commands.append(" ".join(command[3:]))
    return commands


def wheel_name(path: pathlib.Path) -> str:
    """The normalised distribution name of a wheel file (`flax-0.12.8-py3-none-any.whl` -> flax)."""
    return normalise(path.name.split("-")[0])


def wheel_version(path: pathlib.Path) -> str:
    """The version in a wheel's file name (`flax-0.12.8-py3-none-any.whl` -> 0.12.8)."""
    return path.name.split("-")[1]


def breaks_under_jax(wheel: pathlib.Path, jax_version: str | None) -> str | None:
    """Why `wheel` can't import under `jax_version` (`BREAKS_UNDER_JAX`), or None."""
    for name, last, jax_from, why in BREAKS_UNDER_JAX:
        if (
            wheel_name(wheel) == name
            and jax_version is not None
            and version_tuple(wheel_version(wheel)) <= version_tuple(last)
            and version_tuple(jax_version) >= version_tuple(jax_from)
        ):
            return f"{name} {wheel_version(wheel)} under jax {jax_version}: {why}"
    return None


def choose(wheels: list[pathlib.Path], installed: dict[str, str | None], minimums: dict[str, str]) -> dict[str, str]:
    """Which wheels to install, each with the reason: every wheel of a missing package; a pinned one
    where the installed version is absent or older than our minimum, unless it can't import under
    the installed JAX (`installed["jax"]`; `breaks_under_jax`)."""
    chosen = {}
    pinned = {normalise(name) for name in PINNED}
    for wheel in wheels:
        name = wheel_name(wheel)
        have = installed.get(name)
        if name not in pinned:
            chosen[str(wheel)] = "not in the image" if have is None else f"carried (image has {have})"
            continue
        if have is not None and not (name in minimums and version_tuple(have) < version_tuple(minimums[name])):
            continue
        broken = breaks_under_jax(wheel, installed.get("jax"))
        if broken is not None:
            print(f"keep the image's {name} {have}: ours can't be used ({broken})", flush=True)
        elif have is None:
            chosen[str(wheel)] = "not in the image"
        else:
            chosen[str(wheel)] = f"image has {have} < our minimum {minimums[name]}"
    return chosen


def installed_versions(names: list[str]) -> dict[str, str | None]:
    """This interpreter's version of each distribution (None: absent)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def install(target: pathlib.Path, folder: pathlib.Path = WHEELS) -> dict[str, str]:
    """Installs the chosen wheels of `folder` into `target` (put it first on PYTHONPATH); returns the choice."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: run `tools/device_wheels.py download` here and carry .whl")
    chosen = choose(wheels, installed_versions(["jax", *(wheel_name(w) for w in wheels)]), minimum_versions())
    for wheel, reason in chosen.items():
        print(f"install {pathlib.Path(wheel).name}: {reason}", flush=True)
    for wheel in sorted(set(map(str, wheels)) - set(chosen)):
        print(f"keep the image's: {pathlib.Path(wheel).name} not installed", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run([*command, "--no-cache-dir", "--upgrade", "--target", str(target), *chosen], check=True)
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("download", help="fill .whl/ here (pip reaches the package index)")
    install_parser = commands.add_parser("install", help="install the chosen wheels there")
    install_parser.add_argument("--target", default="/tmp/site", help="folder to install into")
    args = parser.parse_args(argv)
    if args.command == "download":
        for command in download():
            print(command)
        total = sum(p.stat().st_size for p in WHEELS.glob("*.whl"))
        print(f"{len(list(WHEELS.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {WHEELS}")
    else:
        install(pathlib.Path(args.target))


if __name__ == "__main__":
    main()
