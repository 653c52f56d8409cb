"""Local folders: telling a path from a Hub id, and writing a folder so that it is either complete or untouched."""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only mean a local path: a Hub id is `name` or `owner/name`, never absolute,
    never relative-looking (`.`, `~`), never with a backslash or more than one slash."""
    return name.startswith(("/", ".", "~")) or os.path.isabs(name) or "\\" in name or name.count("/") > 1


def write_folder_atomically(folder, write: Callable[[Path], None], *, replace: bool = False, last: str | None = None) -> Path:
    """Call `write(tmp)` to fill a fresh temporary folder beside `folder`, then move the result in.

    - `folder` missing (or `replace`): it appears by one rename, complete or not at all (with `replace`,
      the old folder is removed only once the new one is fully written);
    - `folder` existing (it may hold other files, e.g. a checkpoint's): each file is moved in by its own
      rename, only after all of them were written, the one named `last` at the end, so a failure while
      writing leaves the old files untouched.
    The result has the permissions of an ordinary new folder (not the private mode of a temp folder).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        if folder.exists() and replace:
            shutil.rmtree(folder)
        if not folder.exists():
            os.replace(tmp, folder)
            return folder
        for file in sorted(tmp.iterdir(), key=lambda f: f.name == last):
            os.replace(file, folder / file.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
