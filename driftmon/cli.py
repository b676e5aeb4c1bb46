"""The ``driftmon`` command. Settings are the single source of truth: the CLI only names
the config file and the inputs."""

from __future__ import annotations

import argparse
import json
import sys

from driftmon import logs
from driftmon.settings import ConfigError, Settings, load_settings, masked

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_NOTHING_ACCEPTED = 0, 1, 2, 3

REPLAY_EPILOG = """\
Embeddings are off in replay unless --embeddings is given, whatever embeddings.enabled
says: embedding is about 100x slower than the rest of the core. The daemon follows
embeddings.enabled.

The report lists the first rejected records as {file, line, reason, field, detail}:
line is the 1-based line number within that file, blank lines counted (as an editor
shows it); event_index in detections counts records across all files, blank lines not
counted. Input is JSON Lines: one JSON object per line.

exit codes:
  0  at least one record was accepted (with or without detections)
  1  fatal error
  2  bad configuration, an input that is missing or a directory, embeddings unavailable
  3  no record was accepted: every record rejected, or no records at all
"""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    logs.configure(settings.logging.level, settings.logging.format)
    return settings


def _cmd_replay(args: argparse.Namespace) -> int:
    from driftmon.embedding import EmbeddingUnavailable
    from driftmon.replay import replay, summary_table, write_report

    settings = _settings(args)
    # Replay ignores embeddings.enabled: only the flag turns them on.
    settings = settings.model_copy(
        update={"embeddings": settings.embeddings.model_copy(update={"enabled": args.embeddings})}
    )
    if args.format is not None:
        settings = settings.model_copy(
            update={"input": settings.input.model_copy(update={"format": args.format})}
        )
    try:
        result = replay(args.files, settings)
    except IsADirectoryError as exc:
        directory = str(exc).rstrip("/")
        print(
            f"driftmon replay: {directory} is a directory, not a file; "
            f"to replay the files in it: driftmon replay {directory}/*.jsonl",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except FileNotFoundError as exc:
        print(f"driftmon replay: no such file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddingUnavailable as exc:
        print(f"driftmon replay: {exc} (or run without --embeddings)", file=sys.stderr)
        return EXIT_CONFIG
    print(summary_table(result))
    if args.report:
        write_report(result, args.report)
        print(f"\nreport written to {args.report}")
    if result.accepted == 0:
        why = (
            "every record was rejected"
            if result.records
            else "the input has no records (empty or blank lines only)"
        )
        print(f"driftmon replay: no record was accepted: {why}", file=sys.stderr)
        return EXIT_NOTHING_ACCEPTED
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
    from driftmon.demo.synthetic import Upgrade, generate

    upgrade = (
        Upgrade(
            endpoint=args.upgrade_endpoint, at_event=args.upgrade_at, new_model=args.upgrade_model
        )
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


COMPARE_EPILOG = """\
Both files go through the daemon's decoders and feature extractor, and through the same
anytime-valid comparison as a live model transition. When the files share response ids
(the same prompts answered by both versions: a golden set), answers are paired by id,
which needs far fewer answers; otherwise NEW is compared with OLD's profile.

exit codes:
  0  unchanged, changed (a minor version) or not decided yet
  1  breaking: a contract or guard is worse beyond its tolerance (block the promotion)
  2  bad input: a file missing or without any accepted answer, no endpoint in both files,
     or bad configuration
"""


def _cmd_compare(args: argparse.Namespace) -> int:
    from driftmon.changelog import render
    from driftmon.compare import EXIT_BAD_INPUT, CompareInputError, compare

    settings = _settings(args)
    if args.format is not None:
        settings = settings.model_copy(
            update={"input": settings.input.model_copy(update={"format": args.format})}
        )
    try:
        result = compare(args.old, args.new, settings)
    except CompareInputError as exc:
        print(f"driftmon compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(render([t.report() for t in result.transitions]))
    pairing = "paired by id" if result.paired else "not paired (no shared ids)"
    if result.paired and result.unpaired:
        pairing += f"; {result.unpaired} new answers without a partner were not compared"
    print(
        f"\n{result.old.path}: {len(result.old.events)} accepted; "
        f"{result.new.path}: {len(result.new.events)} accepted; {pairing}.",
        file=sys.stderr,
    )
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(result.report(), handle, indent=1)
            handle.write("\n")
    return result.exit_code


def _cmd_changelog(args: argparse.Namespace) -> int:
    from driftmon.changelog import render

    if (args.report is None) == (args.url is None):
        print("driftmon changelog: give a REPORT.json or --url, not both", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.url is not None:
            import urllib.request

            url = args.url.rstrip("/")
            if not url.endswith("/transitions"):
                url += "/transitions"
            with urllib.request.urlopen(url, timeout=10) as response:
                data = json.load(response)
        else:
            with open(args.report) as handle:
                data = json.load(handle)
    except (OSError, ValueError) as exc:
        where = args.url or args.report
        print(f"driftmon changelog: cannot read {where}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    transitions = data.get("transitions") if isinstance(data, dict) else None
    if not isinstance(transitions, list):
        print(
            "driftmon changelog: no 'transitions' list in it (a replay or compare --report, "
            "or a daemon's /transitions)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.endpoint:
        transitions = [t for t in transitions if t.get("endpoint") == args.endpoint]
    print(render(transitions))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from driftmon.daemon import run

    return run(_settings(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from driftmon.demo.live import demo

    return demo(args)


class _VersionAction(argparse.Action):
    """``--version``; the package metadata is only read when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from driftmon.metrics import package_version

        print(f"driftmon {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftmon", description="Streaming drift detection for LLM outputs."
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML settings file (or DRIFTMON_CONFIG)")
        return p

    p = add("run", "Run the Kafka daemon.")
    p.set_defaults(func=_cmd_run)
    p = add("replay", "Run the detectors over JSONL files ('-' reads stdin).")
    p.epilog = REPLAY_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, replayed in order")
    p.add_argument("--report", metavar="OUT.json", help="write the JSON report here")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="embed sampled outputs and watch them (off by default in replay, whatever "
        "embeddings.enabled says; about 100x slower)",
    )
    p.add_argument(
        "--format",
        choices=("auto", "native", "otlp_json", "otlp_proto", "litellm"),
        default=None,
        help="input format (default: input.format, auto: sniffed per line); otlp_proto "
        "reads length-prefixed messages (4-byte big-endian length, then the message)",
    )
    p.set_defaults(func=_cmd_replay)
    p = add("demo", "Embedded broker + synthetic stream with a silent upgrade, live view.")
    p.add_argument("--events", type=int, default=None, help="events to produce")
    p.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds")
    p.set_defaults(func=_cmd_demo)
    p = add("check-config", "Validate the settings and print them, secrets masked.")
    p.set_defaults(func=_cmd_check_config)
    p = add("generate", "Write a synthetic JSONL stream (with a silent upgrade) to stdout.")
    p.add_argument("--events", type=int, default=12_000, help="lines to write (default 12000)")
    p.add_argument(
        "--keys", type=int, default=4, help="(endpoint, model) keys to spread them over (default 4)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed: the same seed, the same stream"
    )
    p.add_argument(
        "--upgrade-endpoint",
        default="sql-assistant",
        help="endpoint whose model is silently upgraded (default sql-assistant)",
    )
    p.add_argument(
        "--upgrade-at",
        type=int,
        default=6_000,
        help="event number where the upgrade happens (default 6000; -1: no upgrade)",
    )
    p.add_argument(
        "--bad-every",
        type=int,
        default=0,
        help="make every Nth line garbage, to exercise rejections (default 0: none)",
    )
    p.add_argument(
        "--upgrade-model",
        default=None,
        metavar="LABEL",
        help="give the upgraded model this new label (a deliberate upgrade, compared with "
        "the old version as a model transition); default: the label stays (silent)",
    )
    p.set_defaults(func=_cmd_generate)
    p = add("compare", "Compare two sets of outputs as a model transition (a promotion gate).")
    p.epilog = COMPARE_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("old", metavar="OLD.jsonl", help="outputs of the current version")
    p.add_argument("new", metavar="NEW.jsonl", help="outputs of the candidate version")
    p.add_argument("--report", metavar="OUT.json", help="write the JSON comparison here")
    p.add_argument(
        "--format",
        choices=("auto", "native", "otlp_json", "litellm"),
        default=None,
        help="input format (default: input.format)",
    )
    p.set_defaults(func=_cmd_compare)
    p = add("changelog", "Print the Markdown changelog of model transitions.")
    p.add_argument("report", nargs="?", metavar="REPORT.json", help="a replay or compare --report")
    p.add_argument("--url", help="a running daemon's metrics address (reads /transitions)")
    p.add_argument("--endpoint", help="only this endpoint's transitions")
    p.set_defaults(func=_cmd_changelog)
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
