"""Where the steps read and write: a local folder or an object-store URI, and writes a reader never sees half-done.

Every path flag of every step is a `Location`: a local path, or a URI that pyarrow resolves
(`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://...`; other fsspec schemes through fsspec).
Credentials come from each node's usual environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN or an instance role for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS), never from the
command line. An S3-compatible server elsewhere (MinIO, Ceph, R2, a test server) is named by
`--endpoint-url` or AWS_ENDPOINT_URL. A Location pickles as its URI and endpoint only, so a Ray worker
resolves it again with its own node's credentials.

Writes: a local file is written under a temporary name and renamed; an object-store object is
written to memory, then uploaded in one go, and appears whole when the upload completes (a killed
upload leaves nothing). Steps
publish their manifest last, and readers read only what a manifest lists.
"""

import io
import json
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from .errors import UserError

__all__ = ["Location", "write_atomic", "write_json", "endpoint_url"]
ENDPOINT_ENV = "AWS_ENDPOINT_URL"


def endpoint_url(given: str | None = None) -> str | None:
    """An S3-compatible endpoint: the one given (--endpoint-url), else AWS_ENDPOINT_URL(_S3), else None (AWS)."""
    return given or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(ENDPOINT_ENV) or None


def _s3(endpoint: str | None):
    options = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        options = {"endpoint_override": host.rstrip("/"), "scheme": scheme or "https",
                   "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    return pafs.S3FileSystem(**options)


def _resolve(uri: str, endpoint: str | None):
    """(pyarrow filesystem, path inside it) for a URI."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        return _s3(endpoint), uri.split("://", 1)[1].rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (ValueError, OSError):  # pyarrow.lib.ArrowInvalid is a ValueError
        pass
    try:
        import fsspec

        ffs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise UserError(f"{uri}: no filesystem for the scheme {scheme}:// ({err}); use a local path, s3://, gs:// "
                        "or a scheme an installed fsspec package provides") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), path.rstrip("/")


@dataclass(frozen=True)
class Location:
    """A folder or file: `uri` as the user wrote it (local paths made absolute), `fs` and `path` inside it."""
    uri: str
    endpoint: str | None = None
    fs: object = field(default=None, compare=False, repr=False)
    path: str = field(default="", compare=False, repr=False)

    @classmethod
    def of(cls, where, endpoint: str | None = None) -> "Location":
        if isinstance(where, Location):
            return where
        text = str(where)
        if "://" not in text or text.startswith("file://"):
            local = str(Path(text.removeprefix("file://")).absolute())
            return cls(local, None, pafs.LocalFileSystem(), local)
        endpoint = endpoint_url(endpoint) if text.split("://")[0].lower() in ("s3", "s3a") else None
        fs, path = _resolve(text.rstrip("/"), endpoint)
        return cls(text.rstrip("/"), endpoint, fs, path)

    def __reduce__(self):  # pickled as the URI: the other side resolves it with its own credentials
        return Location.of, (self.uri, self.endpoint)

    def __str__(self):
        return self.uri

    def __truediv__(self, name) -> "Location":
        return self.join(name)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts) -> "Location":
        rel = posixpath.join(*[str(p) for p in parts])
        if self.is_local:
            path = os.path.join(self.path, rel)
            return Location(path, None, self.fs, path)
        return Location(f"{self.uri}/{rel}", self.endpoint, self.fs, f"{self.path}/{rel}")

    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.path)

    # what is there
    def info(self):
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise UserError(f"cannot reach {self.uri} ({err}): check the credentials in the environment "
                            "(AWS_ACCESS_KEY_ID, ...) and --endpoint-url / AWS_ENDPOINT_URL") from None

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def files(self, recursive: bool = True) -> list[str]:
        """Paths relative to this folder of every file under it (sorted); [] when there is none."""
        if not self.is_dir():
            return []
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        base = self.path.rstrip("/") + "/"
        found = [i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        rel = [posixpath.relpath(p, base) if not self.is_local else os.path.relpath(p, base) for p in found]
        return sorted(r.replace(os.sep, "/") for r in rel)

    def dirs(self) -> list[str]:
        """Names of the sub-folders directly under this folder."""
        selector = pafs.FileSelector(self.path, recursive=False, allow_not_found=True)
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.Directory)

    # reading
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open_input(self):
        """A seekable file (ranged reads on object stores)."""
        return self.fs.open_input_file(self.path)

    # writing
    @contextmanager
    def open_output(self):
        """A writable file that appears at this location whole, or not at all."""
        if self.is_local:
            tmp = Path(self.path).with_name(f".{Path(self.path).name}.tmp-{os.getpid()}")
            f = _created(tmp, self.path)
            try:
                with f:
                    yield f
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        else:  # buffered, then one upload: an error while writing (or a kill) publishes nothing
            buffer = io.BytesIO()
            yield buffer
            with self.fs.open_output_stream(self.path) as f:
                f.write(buffer.getbuffer())

    def write_bytes(self, data: bytes) -> "Location":
        with self.open_output() as f:
            f.write(data)
        return self

    def write_text(self, text: str) -> "Location":
        return self.write_bytes(text.encode())

    def check_writable(self, flag: str) -> "Location":
        """Refuse, naming `flag`, what this process cannot write to: a local path below a file or in a folder it may
        not write into, a bucket prefix in a bucket that does not exist (creating buckets is the user's call)."""
        if self.is_local:
            reason = _unwritable(Path(self.path))
            if reason:
                raise UserError(f"{flag} {self.uri}: {reason}")
        else:
            bucket = Location(self.uri.split("://")[0] + "://" + self.path.split("/")[0], self.endpoint, self.fs,
                              self.path.split("/")[0])
            if not bucket.is_dir():
                raise UserError(f"{flag} {self.uri}: the bucket {bucket.uri} does not exist or these credentials "
                                f"cannot see it: create it, or check AWS_ENDPOINT_URL / --endpoint-url "
                                f"({self.endpoint or 'AWS'}) and the keys in the environment")
        return self

    def mkdir(self):
        self.fs.create_dir(self.path, recursive=True)

    def delete(self):
        """Remove this file (no error when absent)."""
        if self.is_file():
            self.fs.delete_file(self.path)


def _unwritable(path: Path) -> str | None:
    """Why this process cannot create `path`, with the fix; None when the nearest folder that exists at or above it
    is one it may write into."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, so nothing can be written below it: choose another path"
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system: choose a folder on a writable one"
    return f"this user may not write into {folder}: choose a folder you can write to, or change its permissions"


def _created(tmp: Path, final: str):
    """`tmp` opened for writing, with its folders; a UserError naming `final` when this process cannot create it."""
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        return open(tmp, "wb")
    except OSError as err:
        reason = _unwritable(tmp) or f"{err.strerror or err}; choose a location you can write to, or fix its " \
            "permissions"
        raise UserError(f"cannot write {final}: {reason}") from None


def write_atomic(path, write) -> Path:
    """imf_core's write(temporary path)-then-rename for local files (imported late: decode workers skip torch)."""
    from imf_core.checkpoint import write_atomic as atomic

    return atomic(path, write)


def write_json(path, data: dict):
    """Write JSON atomically to a local path or a Location."""
    text = json.dumps(data, indent=1) + "\n"
    if isinstance(path, Location):
        return path.write_text(text)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_json(location: Location):
    return json.loads(location.read_text())
