"""Uploads: checkpoint files and training texts a user sends through the browser, saved under
<checkpoints root>/.uploads (catalog.uploads_dir) so that they load like any path.

Nothing in an upload is run as code: a zip is unpacked with its paths, links and size checked, and
the files are then loaded by gpt.checkpoint, which never unpickles code. Each checkpoint upload is
a folder <id>/ with a small <id>.json beside it that keeps the file names the user chose, so the
app labels and explains it in those names and never shows the internal path.

  try_upload(files, use) -> str | None   save, hand to `use`; discard on any failure, prune on success
  save_upload([(name, bytes)]) -> Path   a folder or ckpt.pt to give resources.load_model
  discard_upload(path)                   remove what save_upload made (a model that failed to load)
  upload_names(path) -> [str] | None     the file names the user uploaded, for catalog.describe
  explain(path, error) -> str            an error about an upload, in the user's file names
  prune_uploads(in_use) -> [Path]        drop loaded uploads past the newest KEEP_UPLOADS, or older
                                         than MAX_AGE_DAYS (never `in_use`, never training texts)
  save_text_upload(name, bytes) -> Path  a training text for the Train page
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from app.catalog import uploads_dir
from gpt.checkpoint import CheckpointError
from gpt.imports import MissingTokenizerError

UPLOAD_LIMIT_MB = 50  # server.maxUploadSize in .streamlit/config.toml (a test keeps the two equal)
# a checkpoint barely compresses, so a few times the upload limit is plenty; a zip bomb stops here
MAX_UNZIPPED_BYTES = 4 * UPLOAD_LIMIT_MB << 20
MAX_ZIP_ENTRIES = 10_000
KEEP_UPLOADS, MAX_AGE_DAYS = 8, 7  # loaded uploads kept: the newest 8, none older than a week
UPLOAD_HELP = ("upload a .zip of a checkpoint folder, a model .safetensors together with its "
               "config.json, or a nanoGPT ckpt.pt (with its meta.pkl for a character model)")
LIMIT_HELP = (f"each file may be at most {UPLOAD_LIMIT_MB} MB (the app's upload limit); load a "
              "bigger checkpoint by its path on the Path tab")
FOLDER_RE = re.compile(r".+-\d{8}-\d{6}-[0-9a-f]{6}")  # the folders save_upload makes


def _extract_zip(data: bytes, dest: Path) -> None:
    """Unpack `data` into `dest`, refusing absolute or '..' paths, links and zip bombs. The bomb
    check runs before a byte is written: zipfile never inflates an entry past the size its header
    declares (a header that lies gives a CRC error), so the declared sizes bound what is written."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"the uploaded .zip cannot be opened ({e})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"the uploaded .zip has {len(infos)} entries; a checkpoint has a few")
    if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
        raise CheckpointError(f"the uploaded .zip inflates to more than {MAX_UNZIPPED_BYTES >> 20} MB "
                              f"({MAX_UNZIPPED_BYTES // (UPLOAD_LIMIT_MB << 20)} times the upload "
                              "limit); refused. Load a checkpoint that big by its path on the Path tab")
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
            raise CheckpointError(f"the uploaded .zip holds an unsafe path {info.filename!r}; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CheckpointError(f"the uploaded .zip holds a link {info.filename!r}; refused")
        if info.is_dir() or not name.parts or name.parts[0] == "__MACOSX":
            continue
        target = dest.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:  # CRC errors, truncation
            raise CheckpointError(f"the uploaded .zip is damaged at {info.filename!r} ({e})") from None


def _place(files: list[tuple[str, bytes]], dest: Path) -> tuple[Path, dict[str, str]]:
    """Write the files into `dest` as load expects them: (the path to load, {stored path relative
    to dest: the name the user gave it})."""
    by_ext: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in files:
        by_ext.setdefault(Path(name).suffix.lower(), []).append((Path(name).name, data))
    exts, single = set(by_ext), all(len(v) == 1 for v in by_ext.values())
    if exts == {".zip"} and single:
        zname, data = by_ext[".zip"][0]
        _extract_zip(data, dest)
        found = dest
        while True:  # descend through a zip's single top folder
            entries = [p for p in found.iterdir() if p.name != "__MACOSX"]
            if not (len(entries) == 1 and entries[0].is_dir()):
                return found, {"": zname}
            found = entries[0]
    if exts == {".safetensors", ".json"} and single:
        (dest / "model.safetensors").write_bytes(by_ext[".safetensors"][0][1])
        (dest / "config.json").write_bytes(by_ext[".json"][0][1])
        return dest, {"model.safetensors": by_ext[".safetensors"][0][0], "config.json": by_ext[".json"][0][0]}
    if exts in ({".pt"}, {".pt", ".pkl"}, {".ckpt"}, {".ckpt", ".pkl"}) and single:
        shown = {}
        if ".pkl" in by_ext:
            (dest / "meta.pkl").write_bytes(by_ext[".pkl"][0][1])
            shown["meta.pkl"] = by_ext[".pkl"][0][0]
        name, data = next(v for k, v in by_ext.items() if k != ".pkl")[0]
        (dest / "ckpt.pt").write_bytes(data)
        return dest / "ckpt.pt", {"ckpt.pt": name, **shown}
    got = ", ".join(n for n, _ in files)
    raise CheckpointError(f"cannot tell what {got} is: {UPLOAD_HELP}")


def save_upload(files: list[tuple[str, bytes]]) -> Path:
    """Save uploaded (file name, bytes) into a fresh folder under <checkpoints root>/.uploads and
    return the path to give load_model: the folder (a zip's single top folder, a safetensors +
    config.json pair) or the ckpt.pt. The user's file names go into <folder>.json beside it.
    CheckpointError when the files are not a known combination, or none arrived (a file over the
    upload limit never does); the folder is removed again in that case."""
    if not files:
        raise CheckpointError(f"no file was received. Choose the files first; {LIMIT_HELP}")
    big = [n for n, data in files if len(data) > UPLOAD_LIMIT_MB << 20]
    if big:
        raise CheckpointError(f"{', '.join(big)}: over the upload limit; {LIMIT_HELP}")
    stem = re.sub(r"[^\w.-]+", "-", Path(files[0][0]).stem)[:40] or "upload"
    dest = uploads_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True)
    try:
        found, shown = _place(files, dest)
        info = {"names": [Path(n).name for n, _ in files], "files": shown, "saved_at": time.time()}
        _sidecar(dest).write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
        return found
    except BaseException:
        discard_upload(dest)
        raise


def try_upload(files: list[tuple[str, bytes]], use: Callable[[str], bool]) -> str | None:
    """Save the uploaded files and call use(path), which loads them and says whether they became
    the model. On any failure (use returning False or raising) the upload is discarded, so nothing
    refused stays on disk; on success the older uploads are pruned, never this one. Returns why
    the files could not be saved, or None once use() has run (it reports its own errors)."""
    try:
        path = save_upload(files)
    except CheckpointError as e:
        return str(e)
    except OSError as e:  # a full disk: the partial folder is already removed
        return f"it could not be saved ({e.strerror or e})"
    ok = False
    try:
        ok = use(str(path))
    finally:
        if ok:
            prune_uploads(in_use=[path])
        else:
            discard_upload(path)
    return None


def _sidecar(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.json"


def _folder_of(path: str | os.PathLike) -> Path | None:
    """The upload folder (<uploads>/<id>) that `path` lies in, or None."""
    root = uploads_dir().resolve()
    try:
        rel = Path(path).resolve().relative_to(root).parts
    except (ValueError, OSError):
        return None
    return root / rel[0] if rel and rel[0] != "data" and not rel[0].endswith(".json") else None


def _info(folder: Path) -> dict:
    try:
        info = json.loads(_sidecar(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def upload_names(path: str | os.PathLike) -> list[str] | None:
    """The file names the user uploaded for the upload that `path` lies in; None for any other path
    (or an upload saved before names were kept)."""
    folder = _folder_of(path)
    names = _info(folder).get("names") if folder is not None else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def explain(path: str | os.PathLike, error: Exception) -> str:
    """`error`, raised while loading the upload at `path`, in the user's file names: no internal
    .uploads/... path, and a missing meta.pkl asks for it to be uploaded together with the ckpt.pt."""
    folder = _folder_of(path)
    if folder is None:
        return str(error)
    info = _info(folder)
    names = " + ".join(upload_names(path) or ["the upload"])
    if isinstance(error, MissingTokenizerError):
        return (f"{names}: this is a character-level nanoGPT model, and its vocabulary is in nanoGPT's "
                f"{error.where}; upload meta.pkl together with it.")
    msg = str(error)
    shown = info.get("files") if isinstance(info.get("files"), dict) else {}
    for base in {str(uploads_dir() / folder.name), str(folder)}:
        for stored, name in sorted(shown.items(), key=lambda kv: -len(kv[0])):
            if stored:
                msg = msg.replace(f"{base}/{stored}", str(name))
        msg = msg.replace(f"{base}/", f"{shown.get('', names)}: " if "" in shown else "")
        msg = msg.replace(base, names)
    return msg


def discard_upload(path: str | os.PathLike) -> None:
    """Remove the upload folder that `path` (from save_upload) lives in, and its names file; other
    paths are left alone."""
    folder = _folder_of(path)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        _sidecar(folder).unlink(missing_ok=True)


def prune_uploads(in_use: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Remove loaded checkpoint uploads beyond the newest KEEP_UPLOADS, and any older than
    MAX_AGE_DAYS, except those `in_use` lies in. Training texts (<uploads>/data) are never touched:
    runs read them. Returns the folders removed."""
    root = uploads_dir()
    if not root.is_dir():
        return []
    keep = {f for f in (_folder_of(p) for p in in_use) if f is not None}
    found = []
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink() and FOLDER_RE.fullmatch(p.name):
            saved = _info(p).get("saved_at")
            found.append((saved if isinstance(saved, (int, float)) else p.stat().st_mtime, p))
    removed = []
    for rank, (saved, folder) in enumerate(sorted(found, reverse=True)):
        if folder.resolve() in keep:
            continue
        if rank >= KEEP_UPLOADS or time.time() - saved > MAX_AGE_DAYS * 86400:
            discard_upload(folder)
            removed.append(folder)
    return removed


def save_text_upload(name: str, data: bytes) -> Path:
    """Save an uploaded training text as <uploads>/data/<stem>-<random>.txt and return its path
    (a fresh name each time, so two uploads of one file never clash)."""
    folder = uploads_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(name).stem)[:40] or "data"
    path = folder / f"{stem}-{uuid.uuid4().hex[:6]}.txt"
    path.write_bytes(data)
    return path
