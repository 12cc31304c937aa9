"""Model checkpoints: a directory with ``config.json`` and ``weights.pt``, written atomically.

Weights are a plain tensor state dict loaded with ``weights_only=True`` (no arbitrary
unpickling). A checkpoint of another format version, or a damaged one, fails with a
``CheckpointError`` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.backbone import STBackbone, STBackboneConfig
from models.patch_transformer import PatchTransformer, PatchTransformerConfig

FORMAT_VERSION = 1
ARCHITECTURES = {"patch_transformer": (PatchTransformer, PatchTransformerConfig),
                 "st_backbone": (STBackbone, STBackboneConfig)}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or incompatible."""


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, architecture: str,
                    config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to directory ``path`` atomically (temp dir + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        weights = tmp / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta = {"format_version": FORMAT_VERSION, "architecture": architecture,
                "config": config, "weights_sha256": digest, "extra": extra or {}}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        for f in (weights, tmp / "config.json"):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a checkpoint directory."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory")
    try:
        meta = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: config.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: config.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: config.json must hold an object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not supported "
                              f"(this stfm-stream reads version {FORMAT_VERSION})")
    if meta.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"checkpoint {path}: unknown architecture "
                              f"{meta.get('architecture')!r}")
    return meta


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint directory; returns ``(model, meta)``."""
    path = Path(path)
    meta = read_meta(path)
    weights = path / "weights.pt"
    try:
        blob = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: weights.pt is missing") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"checkpoint {path}: weights.pt does not match its checksum "
                              "(truncated or modified)")
    cls, cfg_cls = ARCHITECTURES[meta["architecture"]]
    try:
        model = cls(cfg_cls(**meta["config"]))
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path}: config does not fit "
                              f"{meta['architecture']}: {exc}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises many types for bad files
        raise CheckpointError(f"checkpoint {path}: weights.pt cannot be loaded: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return model, meta
