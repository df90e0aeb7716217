"""Uploads: checkpoint files and training texts a user sends through the browser, saved under
<checkpoints root>/.uploads (catalog.uploads_dir) so that they load like any path.

Nothing in an upload is run as code: a zip is unpacked with its paths, links and size checked, and
the files are then loaded by gpt.checkpoint, which never unpickles code.

  save_upload([(name, bytes)]) -> Path   a folder or ckpt.pt to give resources.load_model
  discard_upload(path)                   remove what save_upload made (a model that failed to load)
  save_text_upload(name, bytes) -> Path  a training text for the Train page
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from app.catalog import uploads_dir
from gpt.checkpoint import CheckpointError

MAX_UNZIPPED_BYTES = 4 << 30  # a zip that inflates past this is refused (zip bomb)
MAX_ZIP_ENTRIES = 10_000
UPLOAD_HELP = ("upload a .zip of a checkpoint folder, a model .safetensors together with its "
               "config.json, or a nanoGPT ckpt.pt (with its meta.pkl for a character model)")


def _extract_zip(data: bytes, dest: Path) -> None:
    """Unpack `data` into `dest`, refusing absolute or '..' paths, links and zip bombs."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"the uploaded .zip cannot be opened ({e})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"the uploaded .zip has {len(infos)} entries; a checkpoint has a few")
    total = 0
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
            raise CheckpointError(f"the uploaded .zip holds an unsafe path {info.filename!r}; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CheckpointError(f"the uploaded .zip holds a link {info.filename!r}; refused")
        if info.is_dir() or not name.parts or name.parts[0] == "__MACOSX":
            continue
        total += info.file_size
        if total > MAX_UNZIPPED_BYTES:
            raise CheckpointError("the uploaded .zip inflates to more than "
                                  f"{MAX_UNZIPPED_BYTES >> 30} GiB; refused")
        target = dest.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:  # CRC errors, truncation
            raise CheckpointError(f"the uploaded .zip is damaged at {info.filename!r} ({e})") from None


def save_upload(files: list[tuple[str, bytes]]) -> Path:
    """Save uploaded (file name, bytes) into a fresh folder under <checkpoints root>/.uploads and
    return the path to give load_model: the folder (a zip's single top folder, a safetensors +
    config.json pair) or the ckpt.pt. CheckpointError when the files are not a known combination;
    the folder is removed again in that case."""
    if not files:
        raise CheckpointError(f"nothing uploaded: {UPLOAD_HELP}")
    by_ext: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in files:
        by_ext.setdefault(Path(name).suffix.lower(), []).append((Path(name).name, data))
    stem = re.sub(r"[^\w.-]+", "-", Path(files[0][0]).stem)[:40] or "upload"
    dest = uploads_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True)
    try:
        exts = set(by_ext)
        if exts == {".zip"} and len(by_ext[".zip"]) == 1:
            _extract_zip(by_ext[".zip"][0][1], dest)
            found = dest
            while True:  # descend through a zip's single top folder
                entries = [p for p in found.iterdir() if p.name != "__MACOSX"]
                if len(entries) == 1 and entries[0].is_dir():
                    found = entries[0]
                    continue
                return found
        if exts == {".safetensors", ".json"} and all(len(v) == 1 for v in by_ext.values()):
            (dest / "model.safetensors").write_bytes(by_ext[".safetensors"][0][1])
            (dest / "config.json").write_bytes(by_ext[".json"][0][1])
            return dest
        if exts in ({".pt"}, {".pt", ".pkl"}, {".ckpt"}, {".ckpt", ".pkl"}) and \
                all(len(v) == 1 for v in by_ext.values()):
            if ".pkl" in by_ext:
                (dest / "meta.pkl").write_bytes(by_ext[".pkl"][0][1])
            (dest / "ckpt.pt").write_bytes(next(v for k, v in by_ext.items() if k != ".pkl")[0][1])
            return dest / "ckpt.pt"
        got = ", ".join(n for n, _ in files)
        raise CheckpointError(f"cannot tell what {got} is: {UPLOAD_HELP}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def discard_upload(path: str | os.PathLike) -> None:
    """Remove the upload folder that `path` (from save_upload) lives in; other paths are left alone."""
    root = uploads_dir().resolve()
    p = Path(path).resolve()
    if root in p.parents:
        shutil.rmtree(root / p.relative_to(root).parts[0], ignore_errors=True)


def save_text_upload(name: str, data: bytes) -> Path:
    """Save an uploaded training text as <uploads>/data/<stem>-<random>.txt and return its path
    (a fresh name each time, so two uploads of one file never clash)."""
    folder = uploads_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(name).stem)[:40] or "data"
    path = folder / f"{stem}-{uuid.uuid4().hex[:6]}.txt"
    path.write_bytes(data)
    return path
