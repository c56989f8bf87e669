"""Fingerprints that tie a shard to the model and tokenizer that scored it.

`tokenizer_fingerprint` hashes what the tokenizer does (its serialized pipeline, special tokens and
chat template), so a tokenizer saved again elsewhere keeps its fingerprint. `weights_fingerprint`
hashes the bytes of every weight and config file; each file's digest is cached by path, size and
modification time, so a large checkpoint is read once per machine, not once per run.
`check_model_dir` refuses a missing, incomplete or cut-short model folder before anything loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from schemas.errors import ModelFolderError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_CHUNK = 16 << 20
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def is_local_model(name: str | Path) -> bool:
    """Whether `name` means a local folder: it exists, or is written as a path rather than a
    hub name (`org/name`)."""
    text = str(name)
    return os.path.exists(text) or not _HUB_NAME.fullmatch(text) or text.startswith(".")


def check_model_dir(
    model_dir: str | Path, *, flag: str = "--model", weights: bool = True, tokenizer: bool = True
) -> None:
    """Refuse a model folder that cannot load, naming the file, before anything loads it.

    Checks that the folder exists; with `weights`, that `config.json` is a JSON object, that
    weight files exist (all those a `model.safetensors.index.json` lists), and that every
    `.safetensors` file is whole (its length is what its header describes; only headers are
    read); with `tokenizer`, that a tokenizer file exists. Raises `ModelFolderError`.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelFolderError(folder, f"no such folder (given as {flag})")
    problems = []
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"no tokenizer file ({', '.join(TOKENIZER_FILES)})")
    if weights:
        config = folder / "config.json"
        if not config.is_file():
            problems.append("no config.json")
        else:
            try:
                if not isinstance(json.loads(config.read_text()), dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                raise ModelFolderError(
                    config, f"not a valid config: {e} (given as {flag})"
                ) from None
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
            problems.append(f"no weight files ({', '.join(WEIGHT_SUFFIXES)})")
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
            if missing := sorted(f for f in listed if not (folder / f).is_file()):
                problems.append(f"weight files listed in {index.name} are missing: {missing}")
        for path in sorted(folder.glob("*.safetensors")):
            _check_safetensors(path, flag)
    if problems:
        raise ModelFolderError(folder, f"{'; '.join(problems)} (given as {flag})")


def _check_safetensors(path: Path, flag: str) -> None:
    """A `.safetensors` file must be as long as its header says (a cut copy is not)."""
    size = path.stat().st_size
    fix = "The file is damaged or was cut short: copy or download the model again."
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else size
        if 8 + length > size:
            raise ModelFolderError(
                path, f"{size} bytes, shorter than its header (given as {flag})", fix=fix
            )
        try:
            header = json.loads(f.read(length))
            end = max(
                (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFolderError(
                path, f"unreadable header: {e} (given as {flag})", fix=fix
            ) from None
    if 8 + length + end != size:
        raise ModelFolderError(
            path,
            f"{size} bytes, its header describes {8 + length + end} (given as {flag})",
            fix=fix,
        )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """`sha256:<hex>` of a Hugging Face tokenizer's behaviour.

    Covers the fast tokenizer's serialized pipeline (vocabulary, merges, normalizer,
    pre-tokenizer, post-processor, added tokens), the special tokens and the chat template.
    Padding and truncation settings are left out: they do not change any token id.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("padding", None)
        pipeline.pop("truncation", None)
    else:
        pipeline = {
            "class": type(tokenizer).__name__,
            "vocab": sorted(tokenizer.get_vocab().items()),
        }
    state = {
        "pipeline": pipeline,
        "special": {
            name: getattr(tokenizer, name, None)
            for name in ("bos_token", "eos_token", "pad_token", "unk_token")
        },
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
    }
    canonical = json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def weights_fingerprint(model_dir: str | Path, *, cache_path: Path | None = None) -> str:
    """`sha256:<hex>` over the names and contents of a model folder's weight and config files.

    Any changed byte in any weight file or `config.json` changes it. A hub name (not a local
    folder) is fingerprinted by its name only, which the caller should say.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return "name:" + str(model_dir)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES)
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(
            f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)}); pass a folder written "
            "by `save_pretrained`"
        )
    cache_path = cache_path or _default_cache_path()
    cache = _load_cache(cache_path)
    outer = hashlib.sha256()
    changed = False
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            logger.info("Hashing %s (%.1f MB)", path, stat.st_size / 1e6)
            digest = file_sha256(path)
            cache[key] = digest
            changed = True
        outer.update(f"{path.name}\0{stat.st_size}\0{digest}\n".encode())
    if changed:
        _save_cache(cache_path, cache)
    return "sha256:" + outer.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 16 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _default_cache_path() -> Path:
    root = os.environ.get("SLPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "slpo"
    )
    return Path(root) / "fingerprints.json"


def _load_cache(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, cache: dict[str, str]) -> None:
    # Best effort: a read-only home only costs a re-hash next time.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("Could not write the fingerprint cache %s: %s", path, e)
