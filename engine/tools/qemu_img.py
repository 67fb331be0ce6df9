"""qemu-img: create, inspect, check, convert, commit, rebase, measure, map, compare.

``convert`` runs under a runner that parses ``-p`` progress and handles cancel
and timeout.

Every call has a timeout; read-only queries (info, map, measure) pass ``-U``
(force-share) so they work while a backup job or qemu-nbd holds the image.
``check`` and ``compare`` do not: checking or comparing an image that is being
written gives false answers, so they report ImageBusy instead.

stderr is turned into specific ToolError subclasses (ImageNotFound,
BackingFileError, ImageBusy, NoSpaceError, ImagePermissionError, ImageCorrupt,
NotAnImage). Texts measured with qemu-img 7.2 (Debian 12), run in the C locale.

Cancelling ``convert`` raises ToolCancelled, which is both a ToolError and an
engine.errors.JobCancelled, so a job runner that catches JobCancelled marks the
job cancelled without knowing about tools. The partial output file is left in
place: the caller decides whether to remove it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from engine.tools.base import (
    Completed,
    ToolCancelled,
    ToolError,
    ToolTimeout,
    kill_group,
    run,
    start,
)
from engine.tools.blockspec import ImageSpec

log = logging.getLogger("engine.tools.qemu_img")

PathLike = str | Path
#: a plain path (our own new files), or an image spelled out layer by layer
Image = str | Path | ImageSpec

#: timeout for metadata-only calls (info, check, map, measure, create, rebase -u)
QUERY_TIMEOUT = 120.0
#: timeout for calls that copy data (commit, safe rebase, compare)
DATA_TIMEOUT = 6 * 3600.0

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_OPEN = re.compile(r"Could not open '([^']*)'")
_LOCK_IMAGE = re.compile(r"Is another process using the image \[([^\]]*)\]")
_JSON_NAME = re.compile(r"json:(\{[^']*\})")
_JSON_FILE = re.compile(r'"(?:filename|path)":\s*"([^"]*)"')


def _name(image: Image) -> str:
    """The file name argument qemu gets: a spec as ``json:{...}``, a path as is."""
    return image.json_name() if isinstance(image, ImageSpec) else str(image)


def _shown(image: Image) -> str:
    return image.shown if isinstance(image, ImageSpec) else str(image)


def _format_args(image: Image, fmt: str | None, flag: str = "-f") -> list[str]:
    """``-f FMT`` for a path; nothing for a spec, whose format is inside it."""
    if isinstance(image, ImageSpec) or not fmt:
        return []
    return [flag, fmt]


def _unjson(text: str) -> str:
    """qemu echoes a ``json:{...}`` name in its errors: show the file it names instead."""

    def first_file(match: re.Match[str]) -> str:
        found = _JSON_FILE.search(match.group(1))
        return found.group(1) if found else "the image"

    return _JSON_NAME.sub(first_file, text)


# ---------------------------------------------------------------------------
# errors


class QemuImgError(ToolError):
    """qemu-img failed for a reason not covered by a more specific class."""


class ImageNotFound(QemuImgError):
    """The image file (or the directory to create it in) does not exist."""


class BackingFileError(QemuImgError):
    """An image's backing file cannot be opened: the chain is broken."""

    def __init__(self, message: str, *, image: str = "", backing: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.image = image
        self.backing = backing


class ImageCorrupt(QemuImgError):
    """The image's metadata is damaged (or it is flagged corrupt)."""


class ImageBusy(QemuImgError):
    """Another process holds the image's lock."""


class NoSpaceError(QemuImgError):
    """The filesystem receiving the output is full."""


class ImagePermissionError(QemuImgError):
    """The image cannot be opened: permission denied or an immutable file."""


class NotAnImage(QemuImgError):
    """The file is not an image of the expected format, or the format is unknown."""


def _explain_for(
    image: Image, *, dest: PathLike | None = None, fmt: str | None = None
) -> Callable[[Completed], ToolError | None]:
    """An ``explain`` callback for base.run that knows which files the call touched."""

    def explain(done: Completed) -> ToolError | None:
        return explain_stderr(
            done.stderr, image=_shown(image), dest=dest, fmt=fmt, rc=done.returncode
        )

    return explain


def explain_stderr(
    stderr: str,
    *,
    image: str,
    dest: PathLike | None = None,
    fmt: str | None = None,
    rc: int | None = None,
) -> QemuImgError:
    """Turn qemu-img's stderr into the most specific error with an actionable sentence."""
    stderr = _unjson(stderr)
    text = stderr.strip()
    kw: dict[str, Any] = {"program": "qemu-img", "returncode": rc, "stderr": stderr}
    last = text.splitlines()[-1] if text else f"exit code {rc}"
    last = last.removeprefix("qemu-img: ")
    named = _OPEN.findall(text)
    first = named[0] if named else image

    lock = _LOCK_IMAGE.search(text)
    if lock or ("lock" in text and "Failed to get" in text):
        who = lock.group(1) if lock else first
        return ImageBusy(
            f"{who} is in use by another process (qemu-img lock)",
            hint="wait for the running backup, copy or restore to finish, "
            "or stop the qemu-nbd server or VM that has it open",
            **kw,
        )
    if "No space left on device" in text:
        where = str(dest) if dest is not None else image
        return NoSpaceError(
            f"no space left on the filesystem holding {where}",
            hint="free space there or choose another repository; "
            "the partial output file should be removed",
            **kw,
        )
    if "Could not open backing" in text:
        # "Could not open 'top': Could not open backing file: Could not open 'base': reason"
        # or, from create: "top: Could not open 'base': reason\nCould not open backing image."
        backing = named[-1] if named else "?"
        top = named[0] if len(named) > 1 else image
        reason = _reason(text)
        return BackingFileError(
            f"could not open backing file {backing} of {top}: {reason}",
            image=top,
            backing=backing,
            hint="the chain is broken: put the backing file back where the image expects it, "
            "or rebase the image onto the right one",
            **kw,
        )
    if "Permission denied" in text or "Operation not permitted" in text:
        return ImagePermissionError(
            f"{first} cannot be opened: {_reason(text)}",
            hint="it may be locked immutable (lsattr shows 'i') or owned by another user",
            **kw,
        )
    if "No such file or directory" in text:
        if "Could not create" in text:
            target = str(dest or image)
            return ImageNotFound(
                f"cannot create {target}: its directory {Path(target).parent} does not exist",
                hint="create the directory first or check the repository path",
                **kw,
            )
        return ImageNotFound(
            f"{first} does not exist",
            hint="check the path; the file may have been moved or deleted",
            **kw,
        )
    if "Not a directory" in text:
        return ImageNotFound(f"{first} does not exist (a part of its path is a file)", **kw)
    if "is not in" in text and "format" in text:
        return NotAnImage(
            f"{first} is not a {fmt or 'valid'} image ({last})",
            hint="check that the file is a backup image and that the format is right",
            **kw,
        )
    if "Unknown driver" in text or "Unknown file format" in text:
        return NotAnImage(f"unknown image format ({last})", **kw)
    if "does not support checks" in text:
        return NotAnImage(f"{first} cannot be checked: its format has no metadata to check", **kw)
    if "corrupt" in text.lower() or "invalid" in text or "Invalid" in text:
        return ImageCorrupt(
            f"{first} is damaged: {_reason(text)}",
            hint="run 'qemu-img check' on it; restore from another copy if it stays corrupt",
            **kw,
        )
    return QemuImgError(f"qemu-img failed on {image}: {last}", **kw)


def _reason(text: str) -> str:
    """The innermost reason of a nested qemu error line ("... : reason")."""
    for line in text.splitlines():
        if "Could not" in line or "qcow2:" in line or line.startswith("qemu-img:"):
            return line.rsplit(": ", 1)[-1].strip()
    return text.splitlines()[-1] if text else ""


# ---------------------------------------------------------------------------
# info


@dataclass(frozen=True)
class ImageInfo:
    filename: str
    format: str
    virtual_size: int
    actual_size: int
    #: the backing file name exactly as written in the header (often relative)
    backing_filename: str | None = None
    #: the backing file resolved against the image's directory
    full_backing_filename: str | None = None
    cluster_size: int | None = None
    dirty: bool = False
    compression_type: str | None = None
    corrupt: bool = False
    backing_format: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _image_info(data: Mapping[str, Any]) -> ImageInfo:
    specific = (data.get("format-specific") or {}).get("data") or {}
    return ImageInfo(
        filename=str(data.get("filename", "")),
        format=str(data.get("format", "")),
        virtual_size=int(data.get("virtual-size", 0)),
        actual_size=int(data.get("actual-size", 0)),
        backing_filename=data.get("backing-filename"),
        full_backing_filename=data.get("full-backing-filename"),
        cluster_size=data.get("cluster-size"),
        dirty=bool(data.get("dirty-flag", False)),
        compression_type=specific.get("compression-type"),
        corrupt=bool(specific.get("corrupt", False)),
        backing_format=data.get("backing-filename-format"),
        raw=data,
    )


def info(path: Image, *, fmt: str | None = None, timeout: float = QUERY_TIMEOUT) -> ImageInfo:
    """Header facts of one image. It opens neither the backing file nor an external
    data file the header names (checked with strace on qemu 7.2), so it is the safe
    way to read a header that is not trusted yet. A spec must have no backing layer:
    qemu-img info refuses one (use ``spec.alone()``)."""
    args = ["qemu-img", "info", "--output=json", "-U", *_format_args(path, fmt)]
    done = run([*args, _name(path)], timeout=timeout, explain=_explain_for(path, fmt=fmt))
    return _image_info(json.loads(done.stdout))


def info_chain(path: PathLike, *, timeout: float = QUERY_TIMEOUT) -> list[ImageInfo]:
    """The image and all its backing files, top first. A missing link raises BackingFileError."""
    try:
        done = run(
            ["qemu-img", "info", "--output=json", "-U", "--backing-chain", str(path)],
            timeout=timeout,
            explain=_explain_for(path),
        )
    except (ImageNotFound, ImagePermissionError, NotAnImage, ImageCorrupt):
        # --backing-chain opens each link alone, so a missing backing file is reported
        # as "X does not exist": walk the chain to name the image that needs it.
        _raise_broken_link(path, timeout)
        raise
    data = json.loads(done.stdout)
    if isinstance(data, dict):
        data = [data]
    return [_image_info(d) for d in data]


def _raise_broken_link(path: PathLike, timeout: float) -> None:
    """Raise BackingFileError for the first link of the chain that cannot be opened."""
    current = info(path, timeout=timeout)  # the top itself failing propagates as is
    seen = {current.filename}
    while current.full_backing_filename:
        backing = current.full_backing_filename
        if backing in seen:
            raise ImageCorrupt(f"the backing chain of {path} loops back to {backing}")
        try:
            nxt = info(backing, fmt=current.backing_format, timeout=timeout)
        except QemuImgError as err:
            reason = err.stderr.strip().rsplit(": ", 1)[-1] if err.stderr else str(err)
            raise BackingFileError(
                f"could not open backing file {current.backing_filename} of "
                f"{current.filename}: {reason}",
                image=current.filename,
                backing=current.backing_filename or backing,
                program="qemu-img",
                returncode=err.returncode,
                stderr=err.stderr,
                hint="the chain is broken: put the backing file back where the image expects "
                "it, or rebase the image onto the right one",
            ) from None
        seen.add(nxt.filename)
        current = nxt


# ---------------------------------------------------------------------------
# create


def _opts(options: Mapping[str, str] | None) -> list[str]:
    if not options:
        return []
    for key, value in options.items():
        if "," in key or "," in str(value):
            raise ToolError(f"qemu-img option {key}={value} must not contain a comma")
    return ["-o", ",".join(f"{k}={v}" for k, v in options.items())]


def create(
    path: PathLike,
    size: int,
    *,
    fmt: str = "qcow2",
    backing: PathLike | None = None,
    backing_fmt: str | None = None,
    options: Mapping[str, str] | None = None,
    timeout: float = QUERY_TIMEOUT,
    unsafe: bool = False,
) -> None:
    """Create an image. ``backing`` is written into the header as given (keep it relative);
    ``unsafe`` writes it without opening it (the caller opens the chain spelled out)."""
    args = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-b", str(backing), "-F", backing_fmt or "qcow2"]
        if unsafe:
            args.append("-u")
    args += _opts(options)
    args += [str(path), str(int(size))]
    run(args, timeout=timeout, explain=_explain_for(path, dest=path, fmt=fmt))


# ---------------------------------------------------------------------------
# check


@dataclass(frozen=True)
class CheckResult:
    clean: bool
    corruptions: int
    leaks: int
    check_errors: int
    image_end_offset: int | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def check(path: Image, *, fmt: str | None = None, timeout: float = QUERY_TIMEOUT) -> CheckResult:
    """Check an image's metadata (not its data). Corruption and leaks are results, not errors.

    qemu-img check opens the backing chain a path's header names: give a repository
    file as a spec (``spec.alone()`` checks that one file only).
    """
    args = ["qemu-img", "check", "--output=json", *_format_args(path, fmt)]
    done = run(
        [*args, _name(path)],
        timeout=timeout,
        ok_codes=(0, 2, 3),
        explain=_explain_for(path, fmt=fmt),
    )
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise QemuImgError(
            f"qemu-img check on {_shown(path)} gave no readable report: "
            f"{done.stderr.strip()[-200:] or 'empty output'}",
            program="qemu-img",
            returncode=done.returncode,
            stderr=done.stderr,
        ) from None
    corruptions = int(data.get("corruptions", 0))
    leaks = int(data.get("leaks", 0))
    check_errors = int(data.get("check-errors", 0))
    return CheckResult(
        clean=done.returncode == 0 and corruptions == 0 and leaks == 0 and check_errors == 0,
        corruptions=corruptions,
        leaks=leaks,
        check_errors=check_errors,
        image_end_offset=data.get("image-end-offset"),
        raw=data,
    )


# ---------------------------------------------------------------------------
# convert


def convert(
    src: Image,
    dst: PathLike,
    *,
    src_fmt: str | None = None,
    dst_fmt: str = "qcow2",
    backing: PathLike | None = None,
    backing_fmt: str = "qcow2",
    compression: str | None = None,
    options: Mapping[str, str] | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float | None = None,
    extra_args: Sequence[str] = (),
    poll_interval: float = 0.1,
) -> None:
    """Copy ``src`` into a new image ``dst``. Anything not written by Sendense itself
    (a backup source, a repository point) is given as an ImageSpec, so qemu neither
    probes its format nor follows its header.

    ``on_progress(percent)`` is called with 0..100 as qemu-img reports it (from the
    thread that called convert). ``should_stop()`` is polled every ``poll_interval``;
    when it returns True the process is killed and ToolCancelled is raised, leaving
    the partial ``dst`` for the caller to remove. ``timeout=None`` means no limit
    (use should_stop); otherwise ToolTimeout after that many seconds.
    """
    if compression not in (None, "zstd", "zlib"):
        raise ToolError(f"unknown compression {compression!r}: use 'zstd', 'zlib' or none")
    opts: dict[str, str] = dict(options or {})
    args = ["qemu-img", "convert", "-p", *_format_args(src, src_fmt), "-O", dst_fmt]
    if compression:
        opts.setdefault("compression_type", compression)
        args.append("-c")
    if backing is not None:
        args += ["-B", str(backing), "-F", backing_fmt]
    args += _opts(opts)
    args += [*extra_args, _name(src), str(dst)]

    _run_with_progress(
        args,
        image=src,
        dest=dst,
        fmt=src_fmt,
        cancelled=f"copy into {dst} was cancelled; the partial file is left in place",
        timed_out=f"qemu-img convert into {dst} did not finish within {timeout:g} s and was stopped"
        if timeout is not None
        else "",
        on_progress=on_progress,
        should_stop=should_stop,
        timeout=timeout,
        poll_interval=poll_interval,
    )


def _run_with_progress(
    args: Sequence[str],
    *,
    image: Image,
    dest: PathLike | None,
    fmt: str | None = None,
    cancelled: str,
    timed_out: str,
    on_progress: Callable[[float], None] | None,
    should_stop: Callable[[], bool] | None,
    timeout: float | None,
    poll_interval: float = 0.1,
) -> None:
    """Run a ``qemu-img … -p`` command, feeding its ``(NN.NN/100%)`` lines to ``on_progress``.

    ``on_progress`` is called from the calling thread. ``should_stop()`` is polled every
    ``poll_interval``; True kills the process and raises ToolCancelled(``cancelled``).
    Past ``timeout`` seconds (None: no limit) it is killed and ToolTimeout(``timed_out``)
    raised. A non-zero exit raises the specific QemuImgError for its stderr.
    """
    proc = start(list(args))
    assert proc.stdout is not None and proc.stderr is not None
    err_chunks: list[bytes] = []
    err_thread = threading.Thread(
        target=lambda: err_chunks.append(proc.stderr.read() if proc.stderr else b""), daemon=True
    )
    err_thread.start()
    percents: list[float] = []
    lock = threading.Lock()

    def read_progress() -> None:
        assert proc.stdout is not None
        buf = b""
        while True:
            chunk = cast(io.BufferedReader, proc.stdout).read1(4096)
            if not chunk:
                break
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for part in parts:
                m = _PROGRESS.search(part)
                if m:
                    with lock:
                        percents.append(float(m.group(1)))

    out_thread = threading.Thread(target=read_progress, daemon=True)
    out_thread.start()

    def flush_progress() -> None:
        with lock:
            pending = percents[:]
            percents.clear()
        if on_progress is not None:
            for p in pending:
                on_progress(p)

    # Its end is seen the moment it comes: Popen.wait(timeout) polls with sleeps of up
    # to 50 ms, a tenth of a short restore (a thread blocks in waitpid instead)
    exited = threading.Event()

    def wait_for_exit() -> None:
        proc.wait()
        exited.set()

    threading.Thread(target=wait_for_exit, daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not exited.wait(poll_interval):
            flush_progress()
            if should_stop is not None and should_stop():
                _kill(proc)
                raise ToolCancelled(cancelled, program="qemu-img")
            if deadline is not None and time.monotonic() > deadline:
                _kill(proc)
                raise ToolTimeout(
                    timed_out,
                    program="qemu-img",
                    hint="the source or the repository storage may be hung or very slow",
                )
    except BaseException:
        _kill(proc)
        raise
    out_thread.join(5)
    err_thread.join(5)
    flush_progress()
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise explain_stderr(stderr, image=_shown(image), dest=dest, fmt=fmt, rc=proc.returncode)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    kill_group(proc)  # qemu-img and anything it started
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - kernel stuck in D state
        log.warning("qemu-img pid %s did not exit after SIGKILL", proc.pid)


# ---------------------------------------------------------------------------
# commit, rebase


def commit(
    path: PathLike,
    *,
    base: PathLike | None = None,
    drop: bool = False,
    timeout: float = DATA_TIMEOUT,
) -> None:
    """Merge ``path`` into its backing file (or into ``base`` further down the chain).

    ``drop=True`` leaves ``path`` unchanged instead of emptying it (``-d``).
    """
    args = ["qemu-img", "commit", "-q"]
    if base is not None:
        args += ["-b", str(base)]
    if drop:
        args.append("-d")
    run([*args, str(path)], timeout=timeout, explain=_explain_for(path))


def rebase(
    path: PathLike,
    backing: PathLike | None,
    *,
    backing_fmt: str = "qcow2",
    unsafe: bool = False,
    timeout: float | None = None,
) -> None:
    """Point ``path`` at another backing file (None: make it standalone).

    ``unsafe=True`` (``-u``) only rewrites the header, for when the data is known to be
    the same (a renamed or moved chain); the safe mode copies differing data.
    """
    args = ["qemu-img", "rebase", "-q", "-f", "qcow2"]
    if unsafe:
        args.append("-u")
    if backing is None:
        args += ["-b", ""]
    else:
        args += ["-b", str(backing), "-F", backing_fmt]
    if timeout is None:
        timeout = QUERY_TIMEOUT if unsafe else DATA_TIMEOUT
    run([*args, str(path)], timeout=timeout, explain=_explain_for(path))


# ---------------------------------------------------------------------------
# measure, map, compare


@dataclass(frozen=True)
class Measure:
    required: int
    fully_allocated: int


def measure(
    src: Image,
    *,
    out_fmt: str = "qcow2",
    src_fmt: str | None = None,
    options: Mapping[str, str] | None = None,
    timeout: float = QUERY_TIMEOUT,
) -> Measure:
    """Bytes a conversion of ``src`` into ``out_fmt`` needs (required) and could need."""
    args = ["qemu-img", "measure", "--output=json", "-U", "-O", out_fmt, *_opts(options)]
    args += _format_args(src, src_fmt)
    done = run([*args, _name(src)], timeout=timeout, explain=_explain_for(src, fmt=src_fmt))
    data = json.loads(done.stdout)
    return Measure(required=int(data["required"]), fully_allocated=int(data["fully-allocated"]))


@dataclass(frozen=True)
class MapExtent:
    start: int
    length: int
    #: 0 for the image itself, 1 for its backing file, …
    depth: int
    present: bool
    zero: bool
    data: bool
    #: offset inside the file that holds the data, when there is one
    offset: int | None = None


def map_image(path: Image, *, timeout: float = QUERY_TIMEOUT) -> list[MapExtent]:
    """Allocation map of an image (through its backing chain; a spec's layers only)."""
    done = run(
        ["qemu-img", "map", "--output=json", "-U", _name(path)],
        timeout=timeout,
        explain=_explain_for(path),
    )
    return [
        MapExtent(
            start=int(e["start"]),
            length=int(e["length"]),
            depth=int(e.get("depth", 0)),
            present=bool(e.get("present", True)),
            zero=bool(e.get("zero", False)),
            data=bool(e.get("data", False)),
            offset=e.get("offset"),
        )
        for e in json.loads(done.stdout)
    ]


def compare(
    a: Image,
    b: Image,
    *,
    strict: bool = False,
    a_fmt: str | None = None,
    b_fmt: str | None = None,
    timeout: float = DATA_TIMEOUT,
) -> bool:
    """True when the two images have the same guest-visible content.

    ``strict=True`` also fails on differing sizes or allocation (``-s``).
    """
    args = ["qemu-img", "compare", "-q"]
    if strict:
        args.append("-s")
    args += _format_args(a, a_fmt) + _format_args(b, b_fmt, "-F")
    done = run(
        [*args, _name(a), _name(b)], timeout=timeout, ok_codes=(0, 1), explain=_explain_for(a)
    )
    return done.returncode == 0


def write_locked(path: PathLike, *, timeout: float = QUERY_TIMEOUT) -> bool:
    """Whether a qemu process (here or on another machine sharing the storage) holds
    ``path`` open for writing: ``qemu-img info`` without ``-U`` then fails on qemu's
    image lock. Any other failure (not an image yet, unreadable) means no such lock."""
    try:
        run(
            ["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)],
            timeout=timeout,
            explain=_explain_for(path, fmt="qcow2"),
        )
    except ImageBusy:
        return True
    except ToolError:
        return False
    return False


# ---------------------------------------------------------------------------
# persistent dirty bitmaps (qcow2 only)


@dataclass(frozen=True)
class Bitmap:
    """A persistent dirty bitmap stored in a qcow2 image."""

    name: str
    granularity: int
    #: qemu's flags: "auto" (enabled: it records writes), "in-use" (a writer had the
    #: image open and did not close it cleanly: the bitmap cannot be trusted)
    flags: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return "auto" in self.flags

    @property
    def in_use(self) -> bool:
        return "in-use" in self.flags


def bitmaps(image: Image, *, timeout: float = QUERY_TIMEOUT) -> list[Bitmap]:
    """The persistent bitmaps in a qcow2 image's header (an image alone, no backing)."""
    head = info(image, fmt=None if isinstance(image, ImageSpec) else "qcow2", timeout=timeout)
    specific = (head.raw.get("format-specific") or {}).get("data") or {}
    return [
        Bitmap(
            name=str(b.get("name", "")),
            granularity=int(b.get("granularity", 0)),
            flags=tuple(str(f) for f in b.get("flags", ())),
        )
        for b in specific.get("bitmaps") or ()
    ]


BITMAP_ACTIONS = ("add", "remove", "enable", "disable")


def bitmap(
    image: Image,
    action: str,
    name: str,
    *,
    granularity: int | None = None,
    timeout: float = QUERY_TIMEOUT,
) -> None:
    """``qemu-img bitmap --add|--remove|--enable|--disable`` on a qcow2 image that nobody
    else has open (qemu's image lock refuses otherwise: ImageBusy)."""
    if action not in BITMAP_ACTIONS:
        raise ValueError(f"unknown bitmap action {action!r}")
    args = ["qemu-img", "bitmap", f"--{action}"]
    if action == "add" and granularity:
        args += ["-g", str(granularity)]
    if isinstance(image, ImageSpec):
        args += ["--image-opts", image.image_opts()]
    else:
        args += ["-f", "qcow2", str(image)]
    run([*args, name], timeout=timeout, explain=_explain_for(image))
