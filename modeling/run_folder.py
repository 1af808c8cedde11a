"""A run's folder on any filesystem the data stages accept: a local path or an object store URI.

Training writes through a local working copy: for a local run it is the folder itself; for a run
on an object store (s3://bucket/runs/NAME) it is a cache folder on each machine
(`$TMPDIR/llamaline-runs/<hash>/NAME`), and what the run writes there is published to the store:
metrics and worker records as they are written, TensorBoard events and the Hugging Face export
when complete. Checkpoints go to the store through Ray Train (its `storage_path` is the runs
folder) or, for a loop run without Ray, through `publish`. Resuming lists the checkpoint folders
on the store, newest first, and downloads each into the working copy only when it is reached, so
a multi-node run needs no shared disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from modeling.checkpoint_folders import CHECKPOINT_NAME, checkpoint_path
from tasks.storage import Location, resolve

CACHE_FOLDER = "llamaline-runs"


def storage_filesystem(uri: str) -> pafs.FileSystem:
    """The filesystem of `uri` for processes that do not share this one's environment (Ray Train's
    controller and workers): for s3://, the endpoint and credentials this process sees are written
    into it, since pyarrow otherwise looks them up where it runs."""
    location = resolve(uri)
    if not uri.startswith("s3://"):
        return location.fs
    environment = {"endpoint_override": "AWS_ENDPOINT_URL", "access_key": "AWS_ACCESS_KEY_ID",
                   "secret_key": "AWS_SECRET_ACCESS_KEY", "session_token": "AWS_SESSION_TOKEN",
                   "region": "AWS_DEFAULT_REGION"}
    options = {option: os.environ[name] for option, name in environment.items() if os.environ.get(name)}
    return pafs.S3FileSystem(**options) if "access_key" in options else location.fs


class RunFolder:
    def __init__(self, uri: str) -> None:
        self.location = resolve(uri)
        self.uri = self.location.uri
        self.is_local = isinstance(self.location.fs, pafs.LocalFileSystem)
        if self.is_local:
            self.local = Path(self.location.path)
        else:
            digest = hashlib.blake2b(self.uri.encode(), digest_size=8).hexdigest()
            self.local = Path(tempfile.gettempdir()) / CACHE_FOLDER / digest / self.location.name

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint folders of the run, ascending (where the run lives, not the copy)."""
        if not self.location.exists():
            return []
        infos = self.location.fs.get_file_info(pafs.FileSelector(self.location.path, recursive=False))
        return sorted(int(m.group(1)) for info in infos
                      if info.type == pafs.FileType.Directory and (m := CHECKPOINT_NAME.match(info.base_name)))

    def checkpoints_newest_first(self) -> Iterator[Path]:
        """Local folders of the run's checkpoints, newest first, each fetched when the caller gets to it."""
        for step in reversed(self.checkpoint_steps()):
            folder = checkpoint_path(self.local, step)
            if not self.is_local:
                self._download(self.location.join(folder.name), folder)
            yield folder

    def fetch(self, relative: str) -> Path:
        """The working copy's file `relative`, refreshed from the store when the run lives there."""
        target = self.local / relative
        if not self.is_local:
            source = self.location.join(relative)
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
            else:  # not in the run (yet): a copy left from another run of the same name is stale
                target.unlink(missing_ok=True)
        return target

    def fetch_folder(self, relative: str) -> Path:
        """The working copy's folder `relative`, downloaded afresh when the run lives in a store."""
        if not self.is_local:
            self._download(self.location.join(relative), self.local / relative)
        return self.local / relative

    def publish(self, relative: str) -> None:
        """Copy the working copy's file or folder `relative` to where the run lives (local: nothing to do)."""
        if self.is_local:
            return
        source = self.local / relative
        target = self.location.join(relative)
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for file in files:
            destination = target if file == source else target.join(*file.relative_to(source).parts)
            with destination.fs.open_output_stream(destination.path) as stream:
                with file.open("rb") as f:
                    shutil.copyfileobj(f, stream, 8 << 20)

    def remove(self, relative: str) -> None:
        """Delete `relative` from the working copy and from where the run lives."""
        shutil.rmtree(self.local / relative, ignore_errors=True)
        if not self.is_local:
            self.location.join(relative).delete()

    def _download(self, source: Location, target: Path) -> None:
        if target.is_dir():
            shutil.rmtree(target)  # a copy from an earlier attempt may be partial
        infos = source.fs.get_file_info(pafs.FileSelector(source.path, recursive=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            local = target / Path(info.path).relative_to(source.path)
            local.parent.mkdir(parents=True, exist_ok=True)
            with source.fs.open_input_stream(info.path) as stream, local.open("wb") as f:
                shutil.copyfileobj(stream, f, 8 << 20)
