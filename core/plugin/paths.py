"""motorpool's one cache root on disk, private to the user: engines, decisions and runtime caches live under it."""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variable that moves the cache root
ENV_DIR = "MOTORPOOL_CACHE"


def cache_root(*parts: str, create: bool = False) -> Path:
    """``$MOTORPOOL_CACHE``, else ``<user cache dir>/motorpool``, joined with ``parts``.

    With ``create=True`` every directory from the root down is created (or tightened) readable by the user
    only (0o700).
    """
    raw = os.environ.get(ENV_DIR)
    if raw:
        root = Path(raw).expanduser()
    else:
        import platformdirs  # a declared dependency; imported here to keep `import motorpool` light

        root = Path(platformdirs.user_cache_dir("motorpool"))
    path = root.joinpath(*parts)
    if create:
        private_dir(root)
        sub = root
        for part in parts:
            sub = sub / part
            private_dir(sub)
    return path


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only; an existing one is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (path.stat().st_mode & 0o777) != 0o700:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask, and the dir may predate us
