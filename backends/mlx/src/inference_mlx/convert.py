"""``inference-mlx-convert``: write a GGUF model as an MLX model folder.

    inference-mlx-convert MODEL.gguf OUT_DIR
    inference-mlx-convert --cache MODEL.gguf

The folder holds ``config.json``, ``model.safetensors`` and the tokenizer
files; it loads with ``inference.load_model(OUT_DIR, backend="mlx")`` or
``mlx_lm.load(OUT_DIR)``. With ``--cache`` the folder goes to the MLX
conversion cache (``$INFERENCE_CACHE_DIR/mlx``) and its path is printed.
Errors are one line on standard error, with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from inference.errors import InferenceError
from inference.gguf import read_header

from .detect import INSTALL_HINT

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference-mlx-convert",
        description="Convert a GGUF model file into an MLX model folder.",
    )
    p.add_argument("model", help="the GGUF file to convert")
    p.add_argument("out_dir", nargs="?", help="the folder to write (must not hold a model)")
    p.add_argument(
        "--cache",
        action="store_true",
        help="write into the MLX conversion cache instead and print the folder",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite OUT_DIR if it already holds a model"
    )
    return p


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parser().parse_args(argv)
    if not args.cache and not args.out_dir:
        err.write("inference-mlx-convert: error: give OUT_DIR, or --cache\n")
        return 1
    if args.cache and args.out_dir:
        err.write("inference-mlx-convert: error: give OUT_DIR or --cache, not both\n")
        return 1
    try:
        read_header(args.model, load_arrays=False)  # a corrupt file fails here, in one line
        from .gguf_loader import cached_convert, convert_gguf

        if args.cache:
            folder = cached_convert(args.model)
        else:
            target = args.out_dir
            if os.path.exists(os.path.join(target, "config.json")) and not args.force:
                err.write(
                    f"inference-mlx-convert: error: {target} already holds a model "
                    "(use --force to overwrite)\n"
                )
                return 1
            folder = convert_gguf(args.model, target)
    except (InferenceError, OSError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        err.write(f"inference-mlx-convert: error: {message}\n")
        return 1
    except ImportError as exc:
        err.write(f"inference-mlx-convert: error: {exc}; install with {INSTALL_HINT}\n")
        return 1
    out.write(f"{folder}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
