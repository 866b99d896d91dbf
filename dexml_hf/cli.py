"""The ``dexml-hf`` command line: ``train``, ``evaluate``, ``predict``, ``convert``, ``card``, ``memory``, ``index``.

Each subcommand lives in ``dexml_hf/commands/<name>.py`` with ``HELP``, ``build_parser()`` (a
:class:`~dexml_hf.script_args.DEXMLArgumentParser`: dataclass options + ``--config recipe.yaml``) and ``main(argv)``.
A user error (:class:`~dexml_hf.errors.DEXMLError` and other ``ValueError``, an unreadable file) is one line on stderr with exit status 2
(usage) or 1 (data, model); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys

SUBCOMMANDS = ("train", "evaluate", "predict", "convert", "card", "memory", "index")


def _usage() -> str:
    lines = ["usage: dexml-hf {" + ",".join(SUBCOMMANDS) + "} [options] [--debug]", "", "subcommands:"]
    for name in SUBCOMMANDS:
        lines.append(f"  {name:<9} {importlib.import_module(f'dexml_hf.commands.{name}').HELP}")
    lines.append("\n`dexml-hf <subcommand> --help` lists its options; --debug prints tracebacks.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dexml_hf.errors import DEXMLError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"dexml-hf: error: unknown subcommand {name!r} (choose from {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    command = importlib.import_module(f"dexml_hf.commands.{name}")
    if "-h" in rest or "--help" in rest:
        command.build_parser().print_help()
        return 0
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(command.main(rest) or 0)
    except (DEXMLError, ValueError, OSError) as err:  # user errors; anything else is a bug: traceback
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"dexml-hf {name}: error: {message}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except KeyboardInterrupt:
        print(f"dexml-hf {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
