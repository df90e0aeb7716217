"""Export a run folder for shipping: every checkpoint re-saved with fp16 (or bf16) weights and no
optimizer state, plus the run's config, metrics and status. This is how the bundled model
`checkpoints/shakespeare-char/` was made small enough to commit.

    python -m trainers.export <run-folder> <dest-folder> [--dtype fp16|bf16] [--force] [--snapshots 0,500,...]

--snapshots keeps only the listed snapshots: a run trained with dense snapshots (--snapshot-every)
is shipped with those that tell its story within the size budget.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Collection
from pathlib import Path

import torch

from gpt.checkpoint import (best_dir, has_checkpoint, latest_dir, list_snapshots, load, save,
                            snapshot_dir)
from trainers.config import RUN_CONFIG_FILE

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
RUN_FILES = (RUN_CONFIG_FILE, "metrics.jsonl", "status.json")


def export_run(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16, force: bool = False,
               keep: Collection[int] | None = None) -> dict[str, int]:
    """Copy run folder `src` to `dst` with every checkpoint (latest, best, snapshots) re-saved in
    `dtype` without optimizer state; with `keep`, only the snapshots at those iterations. Returns
    {"checkpoints": n, "bytes": total size of dst}. Refuses to overwrite an existing `dst` unless
    force=True, and a `keep` that names a snapshot the run does not have."""
    src, dst = Path(src), Path(dst)
    if not (src / RUN_CONFIG_FILE).is_file():
        raise ValueError(f"{src} is not a run folder (no config.json)")
    snaps = list_snapshots(src)
    if keep is not None:
        missing = sorted(set(keep) - {it for it, _ in snaps})
        if missing:
            raise ValueError(f"{src} has no snapshot at iter {missing}; it has {[it for it, _ in snaps]}")
        snaps = [(it, p) for it, p in snaps if it in set(keep)]
    if dst.exists():
        if not force:
            raise ValueError(f"{dst} exists; pass --force to replace it")
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    status_path = dst / "status.json"
    if status_path.is_file():  # the shipped copy is not a live process
        status = json.loads(status_path.read_text())
        status["pid"] = None
        status["readonly"] = True  # trainers.runs refuses to resume or delete it
        status_path.write_text(json.dumps(status, indent=1))
    folders = [(where(src), where(dst)) for where in (latest_dir, best_dir) if has_checkpoint(where(src))]
    folders += [(p, snapshot_dir(dst, it)) for it, p in snaps]
    for a, b in folders:
        model, tok, meta = load(a)
        for k in ("source", "source_format"):  # describe the original, not this copy's path
            meta.pop(k, None)
        save(b, model, tok, meta=meta, dtype=dtype)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    return {"checkpoints": len(folders), "bytes": size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="run folder to export")
    ap.add_argument("dst", help="destination folder (must not exist, unless --force)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="weight storage dtype (default fp16)")
    ap.add_argument("--force", action="store_true", help="replace dst if it exists")
    ap.add_argument("--snapshots", metavar="ITERS", help="keep only these snapshots, e.g. 0,500,1000 "
                    "(default: all)")
    args = ap.parse_args(argv)
    try:
        keep = None if args.snapshots is None else [int(x) for x in args.snapshots.split(",") if x.strip()]
        out = export_run(args.src, args.dst, DTYPES[args.dtype], force=args.force, keep=keep)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {out['checkpoints']} checkpoints to {args.dst}: {out['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
