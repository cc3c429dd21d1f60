"""motorpool's one cache root on disk, private to the user: engines, decisions and runtime caches live under it."""

from __future__ import annotations

import os
import stat
import warnings
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


class CacheWarning(UserWarning):
    """A cache was not used, or one of its entries was discarded (corrupt, truncated, unreadable, not private)."""


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only, or check an existing one.

    A directory this user owns that others can only read is tightened to 0o700. One owned by another user, or
    writable by group or others (entries in it could have been planted), raises :class:`PermissionError`
    saying which; a directory that cannot be created raises the :class:`OSError` that says why.
    """
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    problem = private_dir_problem(path)
    if problem and not created:
        raise PermissionError(f"{path} is not private to this user: {problem}")
    if (path.stat().st_mode & 0o777) != 0o700:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask, and the dir may predate us


def private_dir_problem(path: Path) -> str | None:
    """Why ``path`` (an existing directory) is not private to this user, or None when it is."""
    try:
        st = Path(path).lstat()
    except OSError as exc:
        return f"it cannot be read ({exc})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "group and others" if st.st_mode & stat.S_IWOTH else "its group"
        return (f"it is writable by {who} (mode {oct(stat.S_IMODE(st.st_mode))}), so entries in it could have "
                "been planted")
    return None


def usable_cache_dir(*parts: str, what: str = "cache", stacklevel: int = 3) -> Path | None:
    """``cache_root(*parts, create=True)``, or None with a :class:`CacheWarning` saying why it cannot be used
    (not creatable, owned by another user, writable by others): a sick cache turns itself off, never the call."""
    try:
        return cache_root(*parts, create=True)
    except OSError as exc:
        warnings.warn(f"motorpool is not using its {what}: {exc}", CacheWarning, stacklevel=stacklevel)
        return None
