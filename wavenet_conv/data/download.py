"""Fetch a dataset and check its sha256 before it replaces anything (names.txt ships in data/ already)."""
import hashlib
import urllib.request
from pathlib import Path

from wavenet_conv.data.words import DEFAULT_INPUT
from wavenet_conv.utils.errors import DatasetError
from wavenet_conv.utils.files import write_atomically

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url=NAMES_URL, output=DEFAULT_INPUT, sha256=NAMES_SHA256):
    """Fetch a dataset, check its checksum, and only then move it into place (never a half-written file)."""
    output = Path(output)
    if output.is_dir():
        raise DatasetError(f"output {str(output)!r} is a directory; give a file path such as {DEFAULT_INPUT}")

    def fetch_and_check(partial):
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                partial.write_bytes(response.read())
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot download {url}: {e}") from None
        got = sha256_of(partial)
        if sha256 and got != sha256:  # raised before the rename: a good file already there stays
            raise DatasetError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(output, fetch_and_check)
    except OSError as e:
        raise DatasetError(f"cannot write {str(output)!r}: {e.strerror}") from None
    return output
