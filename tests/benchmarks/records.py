"""A result record around sample ``data``, as ``results_md.save_result`` writes one."""

from __future__ import annotations

from typing import Any


def sample_record(name: str, section: str, renderer: str, data: dict[str, Any]) -> dict[str, Any]:
    """The record ``name`` of ``section`` holding ``data`` (fixed commit, machine, load, date)."""
    return {
        "name": name,
        "section": section,
        "renderer": renderer,
        "command": f"python benchmarks/{renderer.split(':')[0]}",
        "commit": "0123456789abcdef",
        "dirty": True,
        "machine": {"nproc": "2"},
        "load": {"start": [3.0, 3.0, 3.0], "end": [4.0, 4.0, 4.0]},
        "date": "2026-12-07T05:00:00Z",
        "wall_s": 900.0,
        "data": data,
    }
