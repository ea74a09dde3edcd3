"""A real S3 API for the tests: moto's threaded HTTP server on a free port of 127.0.0.1.

The project's code reaches it exactly as it reaches a bucket elsewhere: through pyarrow's S3
filesystem (or fsspec), with the endpoint in AWS_ENDPOINT_URL and keys in the environment.
Nothing of the filesystem layer is mocked; moto only plays the server.
"""

import itertools
import logging
import os
from pathlib import Path

# Fake keys for the whole test session, set before Ray starts so that every Ray worker inherits them;
# a developer's real keys never reach any server from here.
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}
_names = itertools.count()


def use_test_keys():
    os.environ.update(TEST_KEYS)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    @property
    def fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint.split("://")[1], scheme="http",
                                 region="us-east-1", allow_bucket_creation=True)

    def bucket(self, prefix="imf") -> str:
        """A new empty bucket: -> s3://NAME."""
        name = f"{prefix}-{next(_names)}-{os.getpid()}"
        self.fs.create_dir(name)
        return f"s3://{name}"

    def upload(self, folder, uri: str) -> str:
        """Copy a local folder's files to s3://bucket/prefix (the test's input data)."""
        import pyarrow.fs as pafs

        folder = Path(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{uri.removeprefix('s3://')}/{path.relative_to(folder).as_posix()}"
            with self.fs.open_output_stream(key) as f:
                f.write(path.read_bytes())
        assert self.fs.get_file_info(uri.removeprefix("s3://")).type == pafs.FileType.Directory
        return uri

    def keys(self, uri: str) -> list[str]:
        """Every object under s3://bucket/prefix, relative to it."""
        import pyarrow.fs as pafs

        base = uri.removeprefix("s3://").rstrip("/")
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    def read(self, uri: str) -> bytes:
        with self.fs.open_input_stream(uri.removeprefix("s3://")) as f:
            return f.read()

    def stop(self):
        self.server.stop()
