"""The encoder commands of the command line (registered by :mod:`sslpoison.cli`):

``sslpoison encoder inspect SOURCE...`` prints what each encoder source is (architecture,
parameters, layout, input, feature width, weights hash); ``sslpoison export RUN_DIR --format
hf|safetensors|torchvision --out PATH [--encoder ROLE] [--layout NAME]`` writes an encoder of
a finished run in the format (and the layout) asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def source_of(text: str, args: argparse.Namespace) -> Any:
    """The :class:`~sslpoison.models.sources.EncoderSource` a command-line SOURCE names: a
    folder with ``config.json`` (or a hub id, with ``--source hf``) is ``hf``; anything else
    a ``file``."""
    from sslpoison.models.sources import EncoderSource

    kind = args.source or ("hf" if (Path(text) / "config.json").is_file() else "file")
    fields: dict[str, Any] = {"source": kind, "path": text}
    if kind == "file":
        fields |= {k: getattr(args, k) for k in ("arch", "layout") if getattr(args, k)}
    elif args.output:
        fields["output"] = args.output
    return EncoderSource.model_validate(fields)


def describe(loaded: Any) -> dict[str, Any]:
    """What ``encoder inspect`` shows of a loaded encoder."""
    record = loaded.record
    return {
        "path": record["path"],
        "source": record["source"],
        "layout": record["layout"],
        "arch": record["arch"],
        "parameters": record["parameters"],
        "input": loaded.input.describe(),
        "feature_dim": record["feature_dim"],
        "weights": record["weights"],
        **({"output": record["output"]} if "output" in record else {}),
        "zero_shot": loaded.text is not None,
    }


def format_description(about: dict[str, Any]) -> str:
    lines = [about["path"]]
    rows = [
        ("source", about["source"]),
        ("layout", about["layout"]),
        ("arch", f"{about['arch']} ({about['parameters'] / 1e6:.2f} M parameters)"),
        ("input", about["input"]),
        (
            "features",
            str(about["feature_dim"]) + (f" ({about['output']})" if "output" in about else ""),
        ),
        ("weights", f"{about['weights']} (sha256 of the state dict, as the stage cache keys it)"),
    ]
    if about["zero_shot"]:
        rows.append(("text", "CLIP text tower and tokenizer: zero-shot evaluation"))
    lines += [f"  {name:<9} {value}" for name, value in rows]
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    from sslpoison.models.sources import load_source

    found = []
    for text in args.sources:
        try:
            loaded = load_source(source_of(text, args))
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise type(e)(f"{text}: {e}" if text not in str(e) else str(e)) from None
        found.append(describe(loaded))
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print("\n\n".join(format_description(f) for f in found))
    return 0


def run_encoders(run_dir: Path) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The encoders of a finished run: ({role: how to load it}, its defenses' names, its
    config). Roles: ``attacked`` (with an attack), ``clean``, and each defense's name."""
    from sslpoison.errors import ConfigError

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"{run_dir}: no results.json, so not a finished run folder")
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{results_file}: unreadable ({e})") from None
    artifacts, config = results.get("artifacts") or {}, results.get("config") or {}
    attacked = "attack_stage_cache" in artifacts or "poisoned_stage_cache" in artifacts
    roles: dict[str, Any] = {}
    if "encoder" in artifacts:
        roles["attacked" if attacked else "clean"] = ("saved", artifacts["encoder"])
    if "clean" not in roles:
        if "stage_cache" in artifacts:
            roles["clean"] = ("saved", str(Path(artifacts["stage_cache"]) / "encoder"))
        elif config.get("encoder"):
            roles["clean"] = ("source", config["encoder"])
    defenses = [d["name"] for d in config.get("defenses") or []]
    for name, path in artifacts.items():
        if name.startswith("encoder-"):
            roles[name.removeprefix("encoder-")] = ("saved", path)
    return roles, defenses, config


def _export(args: argparse.Namespace) -> int:
    import torch

    from sslpoison.errors import ConfigError
    from sslpoison.models import load_encoder
    from sslpoison.models.export import default_role, export_encoder
    from sslpoison.models.sources import EncoderSource, load_source

    run_dir = Path(args.run_dir)
    roles, defenses, _ = run_encoders(run_dir)
    role = args.encoder or default_role(list(roles), defenses)
    if role not in roles:
        raise ConfigError(
            f"--encoder {role}: not an encoder of {run_dir} (it has {', '.join(roles)})"
        )
    how, where = roles[role]
    if how == "saved":
        encoder = load_encoder(where, torch.device("cpu"))
    else:
        encoder = load_source(EncoderSource.model_validate(where)).encoder
    written = export_encoder(encoder, args.format, args.out, args.layout)
    why = "" if args.encoder else f" (default: {_why_default(role, defenses)})"
    print(f"exported the {role} encoder{why} of {run_dir} as {args.format}: {written}")
    return 0


def _why_default(role: str, defenses: list[str]) -> str:
    if role in defenses:
        return "the run's only defense"
    return "the attacked encoder" if role == "attacked" else "the run has no attack"


def add_commands(sub: Any) -> None:
    """Add ``encoder inspect`` and ``export`` to the command line's subparsers ``sub``."""
    enc = sub.add_parser("encoder", help="encoders from outside: inspect them")
    enc_sub = enc.add_subparsers(dest="encoder_command", required=True)
    ins = enc_sub.add_parser(
        "inspect", help="architecture, parameters, layout, input, features, weights hash"
    )
    ins.add_argument("sources", nargs="+", metavar="SOURCE", help="checkpoint files, HF folders")
    ins.add_argument("--source", choices=["file", "hf"], help="default: hf for a folder")
    ins.add_argument("--layout", help="the checkpoint's layout (default: detected)")
    ins.add_argument("--arch", help="the architecture (default: read from the weights)")
    ins.add_argument("--output", choices=["pooled", "cls", "proj"], help="hf: which output")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=_inspect)
    exp = sub.add_parser(
        "export", help="write an encoder of a run as hf, safetensors or torchvision"
    )
    exp.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder")
    exp.add_argument("--format", required=True, choices=["hf", "safetensors", "torchvision"])
    exp.add_argument("--out", required=True, help="the file (or folder, for hf) to write")
    exp.add_argument(
        "--encoder",
        metavar="ROLE",
        help="clean, attacked or a defense's name (default: the only defense's encoder, "
        "else the attacked one, else the clean one)",
    )
    exp.add_argument(
        "--layout", help="safetensors: the key names to write (default: the encoder's own)"
    )
    exp.set_defaults(func=_export)


__all__ = ["add_commands", "describe", "run_encoders", "source_of"]
