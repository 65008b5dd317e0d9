"""Write a random-weight checkpoint of a model family, built offline, that loads as the real one does.

    python -m monitor.testing.tiny_model OUT_DIR --size tiny|served|small|full     (Qwen2-Audio)
    python -m monitor.testing.tiny_model OUT_DIR --arch NAME [--size tiny|small]   (any family)

The families and their builders are those of `monitor.testing.tiny` (one per family, found from
the family registry); `--arch salmonn` writes SALMONN's released layout (checkpoint.pth, beats.pt,
whisper/, llm/) for `model.backend: salmonn`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monitor.testing import tiny


def main(argv: list[str] | None = None) -> int:
    table = tiny.builders()
    every_size = sorted({size for arch in table for size in tiny.sizes(arch)})
    parser = argparse.ArgumentParser(prog="python -m monitor.testing.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint to (created)")
    parser.add_argument("--size", choices=every_size, default="tiny")
    parser.add_argument("--arch", choices=list(table), default="qwen2_audio",
                        help="the model family (sizes: " + "; ".join(f"{arch} {'/'.join(tiny.sizes(arch))}"
                                                                      for arch in table) + ")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    if args.size not in tiny.sizes(args.arch) or args.dtype not in tiny.dtypes(args.arch):
        parser.error(f"--arch {args.arch} takes --size {' or '.join(tiny.sizes(args.arch))} and --dtype "
                     f"{' or '.join(tiny.dtypes(args.arch))}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiny.build(args.out_dir, args.arch, size=args.size, seed=args.seed, dtype=args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
