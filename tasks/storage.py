"""Paths are URIs: local paths and every filesystem pyarrow supports (s3://, gs://, hdfs://, ...).

Writes go through :func:`atomic_output`: the bytes land in a hidden temporary object beside the
target and are moved into place only once complete, so a crash never leaves a half file under a
name that looks finished. On a POSIX filesystem the move is a rename; on an object store a
completed object appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

HIDDEN_PREFIXES = ("_", ".")  # bookkeeping files: ignored by readers, as pyarrow datasets do
CHUNK = 8 << 20


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it; ``uri`` is what the user wrote (kept for messages)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts)
        return Location(self.fs, path, uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def size(self) -> int:
        return self.fs.get_file_info(self.path).size

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def open_input(self):
        # compression=None: pyarrow would otherwise decompress by file extension behind our back.
        return self.fs.open_input_stream(self.path, compression=None)

    def open_random_access(self):
        """Seekable input, as Parquet readers need (footer first, then the row groups)."""
        return self.fs.open_input_file(self.path)

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def list_files(self, suffix: str = "") -> list[Location]:
        """Visible files directly in this folder, sorted by name (bookkeeping files excluded)."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return [
            self.join(info.base_name)
            for info in sorted(infos, key=lambda i: i.base_name)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(suffix)
            and not info.base_name.startswith(HIDDEN_PREFIXES)
        ]

    def delete(self) -> None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)


TEMP_PREFIX = "_tmp."


def remove_temporaries(folder: Location) -> int:
    """Delete half-written files a killed writer left under ``folder``; return how many."""
    if not folder.exists():
        return 0
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    stale = [i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(TEMP_PREFIX)]
    for path in stale:
        folder.fs.delete_file(path)
    return len(stale)


def resolve(uri: str | os.PathLike[str]) -> Location:
    """Turn a local path or a URI into a :class:`Location`.

    s3:// honours AWS_ENDPOINT_URL (and ``?endpoint_override=``) so the same code reaches AWS,
    MinIO or a test server.
    """
    text = os.fspath(uri)
    if "://" not in text or text.startswith("file://"):
        path = os.path.abspath(text.removeprefix("file://"))
        return Location(pafs.LocalFileSystem(), path, path)
    if text.startswith(("http://", "https://")):
        # Read-only inputs (Common Crawl listings and files): fsspec's HTTP client, streamed.
        from fsspec.implementations.http import HTTPFileSystem

        fs = pafs.PyFileSystem(pafs.FSSpecHandler(HTTPFileSystem(block_size=8 << 20)))
        return Location(fs, text, text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises several types for unsupported or malformed URIs
        raise ValueError(f"cannot open {text!r}: {exc}") from exc
    return Location(fs, path.rstrip("/"), text.split("?", 1)[0].rstrip("/"))


@contextlib.contextmanager
def atomic_output(target: Location) -> Iterator[Any]:
    """Yield a writable stream; the target appears, complete, only when the block exits cleanly."""
    parent = Location(target.fs, posixpath.dirname(target.path), posixpath.dirname(target.uri))
    parent.makedirs()
    temp = parent.join(f"{TEMP_PREFIX}{target.name}.{uuid.uuid4().hex}")
    try:
        with target.fs.open_output_stream(temp.path) as stream:
            yield stream
        target.fs.move(temp.path, target.path)
    except BaseException:
        with contextlib.suppress(Exception):
            temp.delete()
        raise


def expand_inputs(uris: list[str]) -> list[str]:
    """Files named, and the visible files under folders named (recursively, sorted), in order."""
    files: list[str] = []
    for uri in uris:
        location = resolve(uri)
        info = location.fs.get_file_info(location.path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input not found: {uri}")
        if info.type != pafs.FileType.Directory:
            files.append(uri)
            continue
        found = location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True))
        prefix = location.path.rstrip("/") + "/"
        for entry in sorted(found, key=lambda e: e.path):
            relative = entry.path.removeprefix(prefix)
            hidden = any(part.startswith(HIDDEN_PREFIXES) for part in relative.split("/"))
            if entry.type == pafs.FileType.File and not hidden:
                files.append(location.join(*relative.split("/")).uri)
    return files


def write_json_atomic(target: Location, payload: Any) -> None:
    data = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    with atomic_output(target) as stream:
        stream.write(data)


def sha256_of(location: Location) -> str:
    digest = hashlib.sha256()
    with location.open_input() as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
