"""Worker checkpoints: the whole online state plus the input offsets it reflects.

A checkpoint is a directory ``<root>/<name>/ckpt-<seq>/`` with ``state.pt`` (the state,
saved with ``torch.save`` and read back with ``weights_only=True``: tensors, numbers,
strings, lists, tuples and dicts only, so loading never unpickles arbitrary objects; numpy
arrays travel as tensors) and ``manifest.json`` (format, version, sequence number, offsets,
metadata and the SHA-256 of ``state.pt``). It is written into a temporary directory, flushed
to disk and renamed into place, so a crash leaves either the whole checkpoint or none. On
load the newest checkpoint that passes every check wins; a half-written, truncated or
tampered one is skipped with a log line naming the problem and the previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectors.kafka_async import TP

log = logging.getLogger(__name__)

FORMAT = "stfm-worker-state"
VERSION = 3          # 3: state per core stage, typed offsets (2: quorum clock, held readings)
_ND = "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def encode_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers; anything
    else that is not a tensor, number, string, None, list, tuple or dict raises naming it."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: object arrays cannot be checkpointed")
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: encode_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        out = [encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(f"{where}: cannot checkpoint a {type(obj).__name__}")


def decode_state(obj: Any) -> Any:
    """Inverse of ``encode_state``."""
    if isinstance(obj, dict):
        if set(obj) == {_ND}:
            return obj[_ND].numpy()
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(decode_state(v) for v in obj)
    return obj


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    seq: int
    path: Path
    offsets: dict[TP, int]
    state: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Checkpoints of one state (e.g. one worker or one partition) under ``root/name``."""

    def __init__(self, root: str | Path, name: str, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("a checkpoint store keeps at least 1 checkpoint")
        self.dir = Path(root) / name
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint directories, oldest first (temporary ones excluded)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name.startswith("ckpt-") and p.name[5:].isdigit():
                out.append(p)
        return sorted(out, key=lambda p: int(p.name[5:]))

    def save(self, state: dict[str, Any], offsets: dict[TP, int],
             meta: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically and durably; returns its directory."""
        existing = self.paths()
        seq = int(existing[-1].name[5:]) + 1 if existing else 1
        buf = io.BytesIO()
        torch.save(encode_state(state), buf)
        data = buf.getvalue()
        manifest = {"format": FORMAT, "version": VERSION, "seq": seq, "created": time.time(),
                    "offsets": [[tp.topic, int(tp.partition), int(off)]
                                for tp, off in sorted(offsets.items())],
                    "meta": meta or {},
                    "files": {"state.pt": {"sha256": _sha256(data), "bytes": len(data)}}}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-ckpt-{seq:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, blob in (("state.pt", data),
                           ("manifest.json", json.dumps(manifest, indent=1).encode())):
            with open(tmp / name, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = self.dir / f"ckpt-{seq:08d}"
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        for old in self.paths()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=False)
        return final

    @staticmethod
    def read(path: str | Path) -> Checkpoint:
        """Load and check one checkpoint directory; raises ``CheckpointError`` naming it."""
        p = Path(path)
        try:
            manifest = json.loads((p / "manifest.json").read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{p}: manifest.json is missing (half-written?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{p}/manifest.json: not valid JSON ({exc})") from None
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if fmt != FORMAT:
            raise CheckpointError(f"{p}: not a worker checkpoint (format {fmt!r})")
        if manifest.get("version") != VERSION:
            raise CheckpointError(f"{p}: checkpoint version {manifest.get('version')!r} is not "
                                  f"supported (this build reads version {VERSION})")
        try:
            data = (p / "state.pt").read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{p}: state.pt is missing") from None
        want = manifest.get("files", {}).get("state.pt", {})
        if len(data) != want.get("bytes") or _sha256(data) != want.get("sha256"):
            raise CheckpointError(f"{p}/state.pt: checksum mismatch (truncated or tampered: "
                                  f"{len(data)} bytes, manifest says {want.get('bytes')})")
        try:
            state = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means unusable
            raise CheckpointError(f"{p}/state.pt: cannot be read safely ({exc})") from None
        offsets = manifest.get("offsets", [])
        if not isinstance(offsets, list) or not all(
                isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], int) and isinstance(e[2], int) and e[2] >= 0
                for e in offsets):
            raise CheckpointError(f"{p}/manifest.json: offsets must be [topic, partition, "
                                  f"offset] entries with a non-negative offset, got {offsets!r}")
        return Checkpoint(seq=int(manifest["seq"]), path=p,
                          offsets={TP(t, part): off for t, part, off in offsets},
                          state=decode_state(state), meta=manifest.get("meta", {}))

    def load_latest(self) -> Checkpoint | None:
        """The newest valid checkpoint (None when there is none at all). Invalid ones are
        skipped with a warning; if checkpoints exist but none is valid, that is an error:
        starting from scratch would silently drop the state."""
        problems = []
        for p in reversed(self.paths()):
            try:
                ck = self.read(p)
            except CheckpointError as exc:
                log.warning("skipping checkpoint: %s; trying the previous one", exc)
                problems.append(str(exc))
                continue
            if problems:
                log.warning("restored from %s after skipping %d newer invalid checkpoint(s)",
                            p, len(problems))
            return ck
        if problems:
            raise CheckpointError(f"no valid checkpoint under {self.dir}: " + "; ".join(problems))
        return None
