"""Shared parts of the generated benchmark pages of ``bench_pages_extra`` and
``bench_pages_ode``: the machine line, the page header, the note for a missing JSON, reading a
JSON."""

from __future__ import annotations

import json
from pathlib import Path


def _n2_machine(meta: dict) -> str:
    """The machine from any of the scripts' metadata layouts."""
    dev = meta.get("device_name") or meta.get("device") or meta.get("machine") or "?"
    if dev in ("cpu", "x86_64", "aarch64", "arm64"):
        dev = f"CPU ({meta.get('cpu') or meta.get('machine') or 'x86_64'})"
    parts = [dev]
    if meta.get("cpus"):
        parts.append(f"{meta['cpus']} cores")
    threads = meta.get("cpu_threads") or meta.get("torch_threads") or meta.get("threads")
    if threads:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    for k, name in (("torch", "torch"), ("python", "Python")):
        if meta.get(k):
            parts.append(f"{name} {meta[k]}")
    return ", ".join(parts)


def _n2_header(title: str, intro: str, machine: str, source: str, command: str) -> list[str]:
    return [
        f"# Benchmark: {title}",
        "",
        intro,
        "",
        "Every table and plot on this page is generated when the documentation is built, "
        f"from `benchmarks/results/{source}`; `benchmarks/README.md` describes the script's "
        "flags and JSON schema. Timings come from a shared CPU and vary between runs.",
        "",
        f"**Machine:** {machine}  ",
        f"**Source:** `{source}`",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def _n2_missing(title: str, source: str, command: str) -> str:
    return "\n".join(
        [
            f"# Benchmark: {title}",
            "",
            f"`benchmarks/results/{source}` is not in this checkout yet, so this page has no "
            "figures. It is made by",
            "",
            "```bash",
            command,
            "```",
            "",
        ]
    )


def _n2_read(results: Path, name: str):
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None
