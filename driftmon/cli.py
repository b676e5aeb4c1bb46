"""The ``driftmon`` command. Settings are the single source of truth: the CLI only names
the config file and the inputs."""

from __future__ import annotations

import argparse
import json
import sys

from driftmon import logs
from driftmon.settings import ConfigError, Settings, load_settings, masked

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    logs.configure(settings.logging.level, settings.logging.format)
    return settings


def _cmd_replay(args: argparse.Namespace) -> int:
    from driftmon.embedding import EmbeddingUnavailable
    from driftmon.replay import replay, summary_table, write_report

    settings = _settings(args)
    try:
        result = replay(args.files, settings)
    except FileNotFoundError as exc:
        print(f"driftmon replay: no such file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddingUnavailable as exc:
        print(
            f"driftmon replay: {exc} (or set DRIFTMON_EMBEDDINGS__ENABLED=false)", file=sys.stderr
        )
        return EXIT_CONFIG
    print(summary_table(result))
    if args.report:
        write_report(result, args.report)
        print(f"\nreport written to {args.report}")
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(masked(settings), indent=2))
    from driftmon.core import compiled_modules

    flags = compiled_modules()
    if all(flags.values()):
        print("driftmon: per-event core compiled (Cython)", file=sys.stderr)
    else:
        plain = ", ".join(name for name, on in flags.items() if not on)
        print(
            f"driftmon: per-event core NOT compiled ({plain}): running as plain Python, "
            "about 1.6x slower per event; build with a C compiler (see README)",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    from driftmon.synthetic import Upgrade, generate

    upgrade = (
        Upgrade(endpoint=args.upgrade_endpoint, at_event=args.upgrade_at)
        if args.upgrade_at >= 0
        else None
    )
    out = sys.stdout
    for line in generate(
        args.events,
        n_keys=args.keys,
        seed=args.seed,
        upgrade=upgrade,
        bad_line_every=args.bad_every,
    ):
        out.write(line)
        out.write("\n")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from driftmon.daemon import run

    return run(_settings(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from driftmon.demo import demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftmon", description="Streaming drift detection for LLM outputs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML settings file (or DRIFTMON_CONFIG)")
        return p

    p = add("run", "Run the Kafka daemon.")
    p.set_defaults(func=_cmd_run)
    p = add("replay", "Run the detectors over JSONL files ('-' reads stdin).")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--report", metavar="OUT.json", help="write the JSON report here")
    p.set_defaults(func=_cmd_replay)
    p = add("demo", "Embedded broker + synthetic stream with a silent upgrade, live view.")
    p.add_argument("--events", type=int, default=None, help="events to produce")
    p.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds")
    p.set_defaults(func=_cmd_demo)
    p = add("check-config", "Validate the settings and print them, secrets masked.")
    p.set_defaults(func=_cmd_check_config)
    p = add("generate", "Write a synthetic JSONL stream (with a silent upgrade) to stdout.")
    p.add_argument("--events", type=int, default=12_000)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upgrade-endpoint", default="sql-assistant")
    p.add_argument("--upgrade-at", type=int, default=6_000, help="-1: no upgrade")
    p.add_argument("--bad-every", type=int, default=0, help="every Nth line is garbage")
    p.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"driftmon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
