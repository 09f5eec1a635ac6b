"""Memory limits, checked from shapes before any array is allocated.

A net's parameters are charged as each layer creates them and its blobs once
every shape is known; past the limit (default: 80% of the memory the machine
has available) the run stops with the figure and the biggest blobs.
"""
import os

from .errors import NetrunError


def available_memory():
    """Bytes of memory available now (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_limit():
    avail = available_memory()
    return int(avail * 0.8) if avail else None


def parse_size(text):
    """'8G', '512M', '1.5GB', '1000000' -> bytes."""
    t = str(text).strip().upper().rstrip("B").rstrip("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise NetrunError(f"--max-memory {text!r}: expected a size such as 8G, 512M or a byte count") from None


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0


class Budget:
    """Running total of bytes a net will hold, against a limit (None: no limit)."""

    def __init__(self, limit):
        self.limit = limit
        self.items = []          # (bytes, what)
        self.total = 0           # running sum of the items' bytes

    def charge(self, nbytes, what):
        self.items.append((int(nbytes), what))
        self.total += int(nbytes)
        if self.limit is not None and self.total > self.limit:
            self.fail()

    def fail(self):
        biggest = sorted(self.items, key=lambda x: -x[0])[:3]
        listing = ", ".join(f"{what} {human(n)}" for n, what in biggest)
        raise NetrunError(f"the net needs {human(self.total)}, more than the limit of "
                          f"{human(self.limit)} (--max-memory); biggest: {listing}")
