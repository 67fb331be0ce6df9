"""How qemu opens an image, spelled out layer by layer: the typed argument for every
qemu-img, qemu-nbd and qemu-storage-daemon call that reads a disk.

qemu interprets what it is given: a file name with ``word:`` before its first
slash is a protocol (``nbd:``, ``http:``, ``json:``…), a format left out is
probed from the file's first bytes, and a QCOW2 header names its own backing
file and external data file. Each of those lets a file's *content* decide what
is read. An :class:`ImageSpec` leaves none of them to qemu: the format
(``driver``), the protocol (``file``, ``host_device`` or ``nbd``), the absolute
file name, and for QCOW2 the backing layer (or ``null``: none at all) are all
given, so headers cannot redirect a read.

A spec is passed to qemu as a ``json:{...}`` file name (qemu-img, qemu-nbd) or
as the ``--blockdev`` JSON of qemu-storage-daemon; both were checked with qemu
7.2. ``qemu-img info`` refuses an explicit backing layer (it opens images with
no backing), so a spec for info describes one file alone (``backing=None``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from engine.tools.base import ToolError

FORMATS = ("raw", "qcow2")
PROTOCOLS = ("file", "host_device", "nbd")
#: the only URI schemes a source may use; anything else is refused, never guessed
NBD_SCHEMES = ("nbd", "nbd+unix")
NBD_DEFAULT_PORT = 10809


class SpecError(ToolError):
    """An image cannot be described safely (a bad URI, a relative path…)."""


@dataclass(frozen=True)
class NbdAddress:
    """Where an NBD export is: a unix socket, or a TCP host and port."""

    export: str
    socket: str | None = None
    host: str | None = None
    port: int = NBD_DEFAULT_PORT

    def server(self) -> dict[str, str]:
        if self.socket is not None:
            return {"type": "unix", "path": self.socket}
        return {"type": "inet", "host": self.host or "", "port": str(self.port)}

    @property
    def uri(self) -> str:
        if self.socket is not None:
            return f"nbd+unix:///{self.export}?socket={self.socket}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{self.export}"


def is_nbd(target: str) -> bool:
    """Whether a restore's target names an NBD server rather than a file."""
    return target.startswith(("nbd://", "nbd+unix://", "nbd+tcp://"))


def parse_nbd_uri(text: str) -> NbdAddress:
    """``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH``, nothing else.

    The URI is taken apart here and handed to qemu as typed options, so qemu never
    parses an operator's string as a protocol.
    """
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in NBD_SCHEMES:
        raise SpecError(
            f"{text!r} is not an nbd:// or nbd+unix:// URI",
            hint="e.g. nbd://host:10809/export or nbd+unix:///export?socket=/run/agent.sock",
        )
    export = unquote(parts.path.removeprefix("/"))
    if parts.fragment or parts.username or parts.password:
        raise SpecError(f"NBD URI {text!r} has parts qemu does not expect (user, #fragment)")
    if scheme == "nbd+unix":
        query = parts.query.split("&") if parts.query else []
        fields = dict(q.partition("=")[::2] for q in query)
        socket = unquote(fields.pop("socket", ""))
        if parts.netloc or fields or not socket.startswith("/"):
            raise SpecError(
                f"NBD URI {text!r} must be nbd+unix:///EXPORT?socket=/absolute/path",
                hint="no host, and only the socket parameter",
            )
        return NbdAddress(export=export, socket=socket)
    if parts.query:
        raise SpecError(f"NBD URI {text!r} must not have a query (?…) over TCP")
    try:
        port = parts.port or NBD_DEFAULT_PORT
    except ValueError:
        raise SpecError(f"NBD URI {text!r} has a port that is not a number (1-65535)") from None
    if not parts.hostname:
        raise SpecError(f"NBD URI {text!r} names no host", hint="e.g. nbd://host:10809/export")
    return NbdAddress(export=export, host=parts.hostname, port=port)


@dataclass(frozen=True)
class ImageSpec:
    """One image as qemu must open it. Build with :meth:`file`, :meth:`device`, :meth:`nbd`."""

    #: the image format: raw or qcow2 (never probed)
    fmt: str
    #: the protocol under it: file, host_device or nbd
    protocol: str
    #: absolute path, for file and host_device
    filename: str = ""
    address: NbdAddress | None = None
    #: qcow2 only: the layer below (its backing), or None for no backing at all
    backing: ImageSpec | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise SpecError(f"image format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if self.protocol not in PROTOCOLS:
            raise SpecError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.protocol == "nbd":
            if self.address is None:
                raise SpecError("an nbd image needs an address")
        elif not os.path.isabs(self.filename) or "\0" in self.filename:
            raise SpecError(f"image file name {self.filename!r} must be an absolute path")
        if self.backing is not None and self.fmt != "qcow2":
            raise SpecError("only a qcow2 image has a backing layer")

    # -- building ------------------------------------------------------------------

    @classmethod
    def file(
        cls, path: str | Path, fmt: str = "qcow2", backing: ImageSpec | None = None
    ) -> ImageSpec:
        return cls(fmt, "file", filename=str(path), backing=backing)

    @classmethod
    def device(cls, path: str | Path, fmt: str = "raw") -> ImageSpec:
        return cls(fmt, "host_device", filename=str(path))

    @classmethod
    def nbd(cls, address: NbdAddress, fmt: str = "raw") -> ImageSpec:
        return cls(fmt, "nbd", address=address)

    def alone(self) -> ImageSpec:
        """This layer without anything below it (for info, check and map of one file)."""
        return ImageSpec(self.fmt, self.protocol, self.filename, self.address, None)

    def layers(self) -> list[ImageSpec]:
        """Top first, down to the layer with no backing."""
        out: list[ImageSpec] = []
        current: ImageSpec | None = self
        while current is not None:
            out.append(current)
            current = current.backing
        return out

    # -- rendering -----------------------------------------------------------------

    @property
    def shown(self) -> str:
        """What a person calls this image: its file name or its URI."""
        return self.address.uri if self.address is not None else self.filename

    def options(self, *, read_only: bool = False, locking: bool = True) -> dict[str, Any]:
        """The blockdev options of every layer (qemu-storage-daemon --blockdev, json:)."""
        proto: dict[str, Any] = {"driver": self.protocol}
        if self.address is not None:
            proto["server"] = self.address.server()
            proto["export"] = self.address.export
        else:
            proto["filename"] = self.filename
        if read_only:
            proto["read-only"] = True
        if not locking and self.protocol in ("file", "host_device"):
            proto["locking"] = "off"
        node: dict[str, Any] = {"driver": self.fmt, "file": proto}
        if read_only:
            node["read-only"] = True
        if self.fmt == "qcow2":
            node["backing"] = (
                self.backing.options(read_only=read_only, locking=locking)
                if self.backing is not None
                else None
            )
        return node

    def image_opts(self) -> str:
        """The same options as qemu's dotted ``--image-opts`` string (one layer, no
        backing: for ``qemu-img bitmap``, which takes no ``json:`` name). Commas in a
        value are doubled, as qemu's option parser expects."""
        if self.backing is not None:
            raise SpecError("--image-opts describes one layer: use alone()")
        flat: dict[str, str] = {"driver": self.fmt, "file.driver": self.protocol}
        if self.address is not None:
            raise SpecError("an nbd image has no --image-opts form here")
        flat["file.filename"] = self.filename
        return ",".join(f"{k}={v.replace(',', ',,')}" for k, v in flat.items())

    def json_name(self) -> str:
        """The ``json:{...}`` file name qemu-img and qemu-nbd accept in place of a path."""
        return "json:" + json.dumps(self.options(), separators=(",", ":"))
