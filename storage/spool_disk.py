"""The spool's files on disk: each item is ``<item_id>.data`` (the bytes) and
``<item_id>.json`` (its manifest). The manifest is written last, atomically, so an item is
durable exactly when its manifest exists; a data file without one is a half-done add and is
dropped on recovery."""

from __future__ import annotations

import builtins
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .durable import TEMP_PREFIX, ensure_dir, fsync_dir, place_atomic, remove_quietly, write_atomic

log = logging.getLogger("storage.spool")  # (the spool's own log)

DATA_SUFFIX = ".data"
MANIFEST_SUFFIX = ".json"
_ID_WIDTH = 20  # zero-padded so a directory listing sorts in item order


@dataclass(frozen=True, slots=True)
class SpoolItem:
    """One file held by the spool until its upload is confirmed."""

    item_id: int  # increases with every add; recovery re-enqueues in this order
    key: str
    store_id: str
    group: str  # items of a group upload in add order, one after the other
    content_type: str | None
    size: int
    added_at: datetime
    replaceable: bool = False  # a later copy of its key makes it redundant (a playlist)
    attempts: int = 0  # upload attempts made so far (not persisted across restarts)


def stem(item_id: int) -> str:
    """An item's file name without its suffix."""
    return f"{item_id:0{_ID_WIDTH}d}"


def data_name(item_id: int) -> str:
    """The name of an item's data file."""
    return stem(item_id) + DATA_SUFFIX


def recover(directory: Path) -> tuple[list[SpoolItem], int]:
    """The items a previous run left in ``directory``, in id order, and how many manifests did
    not parse (their files are kept for a person); leftovers of unfinished adds are removed."""
    ensure_dir(directory)
    manifests: dict[int, Path] = {}
    datas: dict[int, Path] = {}
    for entry in os.scandir(directory):
        path = Path(entry.path)
        if entry.name.startswith(TEMP_PREFIX):
            remove_quietly(path)  # an atomic write that never finished
            continue
        head, _, suffix = entry.name.partition(".")
        if not head.isdigit():
            continue
        if "." + suffix == MANIFEST_SUFFIX:
            manifests[int(head)] = path
        elif "." + suffix == DATA_SUFFIX:
            datas[int(head)] = path
    items: list[SpoolItem] = []
    unreadable = 0
    for item_id in sorted(manifests.keys() | datas.keys()):
        manifest, data = manifests.get(item_id), datas.get(item_id)
        if manifest is None or data is None:
            # add() crashed before its manifest (never acknowledged), or an upload was
            # confirmed and its manifest removed first: either way nothing to keep
            for leftover in (manifest, data):
                if leftover is not None:
                    remove_quietly(leftover)
            continue
        try:
            fields = json.loads(manifest.read_bytes())
            items.append(
                SpoolItem(
                    item_id=item_id,
                    key=str(fields["key"]),
                    store_id=str(fields["store_id"]),
                    group=str(fields["group"]),
                    content_type=fields.get("content_type"),
                    replaceable=bool(fields.get("replaceable", False)),
                    size=data.stat().st_size,  # the bytes we hold, whatever was planned
                    added_at=datetime.fromisoformat(fields["added_at"]),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            # written atomically, so this is corruption: keep the files for a human
            log.error("spool manifest %s unreadable, left in place: %s", manifest, exc)
            unreadable += 1
    return items, unreadable


def write_item(
    directory: Path, item: SpoolItem, src: Path | None, data: builtins.bytes, move: bool
) -> None:
    """Place an item's data (``src`` moved or copied, else ``data``) and its manifest."""
    data_path = directory / data_name(item.item_id)
    # the data and its manifest each fsync'd, then one fsync of the directory for both
    # entries: add() returns only after it, and recovery drops either one alone
    if src is not None:
        place_atomic(src, data_path, move=move, sync_dir=False)
    else:
        write_atomic(data_path, data, sync_dir=False)
    try:
        write_manifest(directory, item)
    except BaseException:
        remove_quietly(data_path)  # without a manifest the data would be dropped anyway
        raise


def write_manifest(directory: Path, item: SpoolItem) -> None:
    """Write (or replace, atomically) an item's manifest, fsync'd with its directory."""
    manifest = {
        "item_id": item.item_id,
        "key": item.key,
        "store_id": item.store_id,
        "group": item.group,
        "content_type": item.content_type,
        "replaceable": item.replaceable,
        "size": item.size,
        "added_at": item.added_at.isoformat(),
    }
    write_atomic(directory / (stem(item.item_id) + MANIFEST_SUFFIX), json.dumps(manifest).encode())


def remove_items(directory: Path, *item_ids: int) -> None:
    """Remove items' files, in this order (an error stops it there)."""
    for item_id in item_ids:
        name = stem(item_id)
        # manifest first: a crash in between leaves bare data, which recovery drops
        remove_quietly(directory / (name + MANIFEST_SUFFIX))
        remove_quietly(directory / (name + DATA_SUFFIX))
        fsync_dir(directory)
