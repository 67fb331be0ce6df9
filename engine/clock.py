"""Clocks: the real one, and one tests can set.

Services take a Clock instead of calling datetime.now(), so schedules, lock
expiries and the console's snapshots can be tested on a fixed time.
All times are timezone-aware UTC.

Besides the wall clock a Clock reports the machine's *boot clock*
(``CLOCK_BOOTTIME``: seconds since boot, counting suspend, never stepped by
``date -s`` or NTP) with the boot id that names the current boot, and whether
the system says its wall clock is synchronised (the kernel's NTP state, as
``timedatectl`` reads it through adjtimex). The lock release compares the wall
clock with the boot clock, so a wall clock that jumped cannot release a lock
early (``engine.services.immutability``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, overload

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
#: systemd's rule for "NTPSynchronized": the kernel's maximum error is below 16 s
_UNSYNCED_MAXERROR_US = 16_000_000


@dataclass(frozen=True)
class BootReading:
    """Where the machine's boot clock stands: which boot, and seconds since it."""

    boot_id: str
    seconds: float


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; for rates and timeouts."""
        ...

    def boot(self) -> BootReading:
        """The boot id and the boot clock (CLOCK_BOOTTIME), read together."""
        ...

    def synchronised(self) -> bool:
        """True when the system reports its wall clock as synchronised (NTP)."""
        ...


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux, 64-bit), for a read-only adjtimex."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def kernel_clock_synchronised() -> bool:
    """The kernel's view (adjtimex with no modes only reads): synchronised when its
    maximum error is below 16 s, the rule ``timedatectl``'s NTPSynchronized uses.
    False when it cannot be read: an unknown clock is not a trusted one."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()
        if libc.adjtimex(ctypes.byref(timex)) < 0:
            return False
    except (OSError, AttributeError):
        return False
    return 0 <= timex.maxerror < _UNSYNCED_MAXERROR_US


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def boot(self) -> BootReading:
        try:
            boot_id = BOOT_ID_FILE.read_text().strip()
        except OSError:
            boot_id = ""
        # without a boot id a reading cannot be matched to a boot: a fresh id makes
        # every check look like the first one after a reboot (the strict case)
        return BootReading(
            boot_id or f"unknown-{uuid.uuid4()}", time.clock_gettime(time.CLOCK_BOOTTIME)
        )

    def synchronised(self) -> bool:
        return kernel_clock_synchronised()


class FixedClock:
    """A clock that only moves when told to (tests, snapshots).

    ``advance`` is time passing: the wall clock, the monotonic clock and the boot
    clock move together. ``set`` is the wall clock jumping (someone ran ``date
    -s``): only the wall clock moves. ``reboot`` starts a new boot (new boot id,
    boot clock near zero) with the wall clock synchronised or not.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            self._now = self._now.replace(tzinfo=UTC)
        self._mono = 1000.0
        self._boots = 1
        self._boot_seconds = 1000.0
        self._synchronised = True
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def boot(self) -> BootReading:
        with self._lock:
            return BootReading(f"fixed-boot-{self._boots}", self._boot_seconds)

    def synchronised(self) -> bool:
        with self._lock:
            return self._synchronised

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds
            self._boot_seconds += seconds

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when if when.tzinfo else when.replace(tzinfo=UTC)

    def reboot(self, *, synchronised: bool, downtime: timedelta = timedelta(0)) -> None:
        """A new boot after ``downtime`` of wall time (the boot clock starts again)."""
        with self._lock:
            self._now += downtime
            self._boots += 1
            self._boot_seconds = 5.0
            self._synchronised = synchronised

    def set_synchronised(self, synchronised: bool) -> None:
        with self._lock:
            self._synchronised = synchronised


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """Catalog drivers may hand back naive datetimes; they are UTC by convention."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


SYSTEM_CLOCK = SystemClock()
