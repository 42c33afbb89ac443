"""Fault kind "full disk": a store on a 20 MiB tmpfs filled up to a random free space.

Each trial creates a ``from_function`` store (24 x 30, blocks 4 x 5) on the tmpfs, fills the
rest of the file system with a ballast file leaving a random number of bytes free, then runs
``fill()`` (or a top-k array's fill): writing stops with ``ENOSPC`` somewhere (a fault) and
must raise a clear ``OSError`` naming the block. Then every stored block must decode and equal
the reference, no temporary file may be left, and once the ballast is gone a new ``fill()``
must compute exactly the missing blocks and the matrix must equal the reference.

Mounting needs root (``mount -t tmpfs``); where it fails, the soak says so and skips this kind
rather than pretending.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

from soak_common import Hang, Tally, bounded, check_then_refill, clear_error, now, reference, values

SHAPE, BLOCK = (24, 30), (4, 5)
SIZE = "20m"


def mount(where: Path) -> str | None:
    """Mount a tmpfs at ``where``; None when done, else why not."""
    where.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(where)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def _ballast(where: Path, leave: int) -> Path:
    """A file filling ``where`` up to ``leave`` free bytes."""
    path = where / "ballast"
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path


def one_trial(n: int, where: Path, rng: random.Random, t: Tally) -> None:
    import infl_array as ia

    store = where / f"s{n}"
    expected = reference(SHAPE)
    ia.InfluenceArray.from_function(store, values, shape=SHAPE, block_shape=BLOCK)
    ballast = _ballast(where, rng.randrange(0, 40 * 4096))
    top_k = rng.random() < 0.2
    try:
        arr = ia.open(store, fn=values)
        bounded(
            lambda: (
                arr.top_k_array(2, axis=1).fill(progress=False)
                if top_k
                else arr.fill(progress=False)
            )
        )
        t.outcomes["fill completed (space sufficed)"] += 1
    except Hang:
        t.hangs += 1
        t.fail(f"disk trial {n}: hang")
    except OSError as exc:
        if exc.errno == errno.ENOSPC and clear_error(exc):
            t.faults += 1
            t.outcomes["ENOSPC: clear OSError naming the block"] += 1
        else:
            t.unclear_errors += 1
            t.fail(f"disk trial {n}: {exc!r}"[:300])
    except Exception as exc:
        t.unclear_errors += 1
        t.fail(f"disk trial {n}: {type(exc).__name__}: {exc}"[:300])
    ballast.unlink()
    partials = [p for p in store.rglob("*.partial")]
    if partials:
        t.outcomes["temporary files left"] += len(partials)
    check_then_refill(store, expected, t, f"disk trial {n}")
    shutil.rmtree(store, ignore_errors=True)


def run(n_trials: int, where: Path, rng: random.Random, t: Tally) -> str | None:
    """``n_trials`` full-disk trials on a tmpfs at ``where``; returns why not, if it cannot."""
    t0 = now()
    why = mount(where)
    if why is not None:
        return f"could not mount a tmpfs ({why}): full-disk trials skipped"
    try:
        for n in range(n_trials):
            one_trial(n, where, rng, t)
    finally:
        subprocess.run(["umount", str(where)], check=False)
    t.seconds += now() - t0
    return None
