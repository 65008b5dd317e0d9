"""Tiny random-weight checkpoints of every model family: one builder per family, their table the family registry.

No weights can be downloaded in CI, yet loading, prompt layout, batching and speed must be tested
on each family's real architecture. Each family names its builder (`Family.tiny`): a module of
this package with `SIZES` (the sizes it builds; `tiny` for tests, `small` for CPU benchmarks),
optionally `DTYPES`, and `build(out_dir, size, seed, dtype) -> Path`, which writes a checkpoint
the family loads as the real one. So a new family's builder is found here, and the tests that go
over every family (tests/test_model_families.py, tests/test_tiny_model.py) and the benchmark's
`--arch` take it up, without a list to edit.

    python -m monitor.testing.tiny_model OUT_DIR [--arch NAME] [--size tiny|small|...]
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from monitor.engine import families
from monitor.engine.families import Family


def builders() -> dict[str, ModuleType]:
    """{family name: its tiny builder module}, for every family that names one, in registry order."""
    return {family.name: importlib.import_module(f"{__name__}.{family.tiny}")
            for family in families.registry() if family.tiny is not None}


def folder_families() -> list[str]:
    """The families whose tiny checkpoint is one model folder, loaded with `model.path` (not SALMONN's parts)."""
    return [family.name for family in families.registry() if family.tiny is not None and family.load is None]


def sizes(arch: str) -> tuple[str, ...]:
    return tuple(builders()[arch].SIZES)


def dtypes(arch: str) -> tuple[str, ...]:
    return tuple(getattr(builders()[arch], "DTYPES", ("float32",)))


def missing_package(family: Family) -> str | None:
    """What to install before the family's tokenizer can be built (mistral_common for Voxtral), or None."""
    needed = family.tokenizer_package
    if needed is not None and importlib.util.find_spec(needed.module) is None:
        return f"{family.name}: its tokenizer needs {needed.module}: {needed.install}"
    return None


def build(out_dir: str | Path, arch: str = "qwen2_audio", size: str = "tiny", seed: int = 0,
          dtype: str = "float32") -> Path:
    """Write a random-weight checkpoint of family `arch` to `out_dir` (ValueError for a name, size or dtype it lacks)."""
    table = builders()
    if arch not in table:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(table)}")
    if size not in sizes(arch):
        raise ValueError(f"size {size!r} is not built for {arch}; choose one of {', '.join(sizes(arch))}")
    if dtype not in dtypes(arch):
        raise ValueError(f"dtype {dtype} is not built for {arch}; choose one of {', '.join(dtypes(arch))}")
    missing = missing_package(families.named(arch))
    if missing is not None:
        raise RuntimeError(missing)
    return table[arch].build(out_dir, size=size, seed=seed, dtype=dtype)
