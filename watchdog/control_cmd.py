"""``erpwatch restart|stop|start NAME… [--all] [--reason TEXT]`` and ``erpwatch reload``.

Each reaches the running erpwatch over its control socket, waits until the request is
carried out (restart: a new process started; stop: the whole tree gone; start: started) and
prints what happened. Exit status: 0 done, 1 refused or failed (with why), 3 no erpwatch
running for this configuration, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def operate_command(args: argparse.Namespace) -> int:
    from watchdog.control import NotRunning, call
    from watchdog.paths import control_socket_path

    names: list[str] = list(getattr(args, "names", []) or [])
    if args.command != "reload":
        if args.all and names:
            print("erpwatch: give target names or --all, not both", file=sys.stderr)
            return EXIT_USAGE
        if not args.all and not names:
            print(f"erpwatch: {args.command}: name a target, or --all", file=sys.stderr)
            return EXIT_USAGE
    request: dict[str, Any] = {
        "command": args.command,
        "targets": names,
        "reason": getattr(args, "reason", "") or "",
    }
    try:
        answer = call(control_socket_path(), request, timeout=args.timeout)
    except NotRunning as exc:
        print(f"erpwatch: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (OSError, ValueError) as exc:
        print(f"erpwatch: the control socket failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if answer.get("error"):
        print(f"erpwatch: {args.command} refused: {answer['error']}", file=sys.stderr)
        return EXIT_FAILED
    for result in answer.get("results", []):
        mark = "ok  " if result.get("ok") else "FAIL"
        print(f"{mark} {result.get('target')}: {result.get('message')}")
    if answer.get("message"):
        print(answer["message"])
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


def register(subparsers: Any) -> None:
    helps = {
        "restart": "restart targets now (not counted against MAX_RESTARTS, no alert)",
        "stop": "stop targets and keep them stopped (also across erpwatch restarts)",
        "start": "start stopped targets (also one past its restart limit)",
    }
    for command, text in helps.items():
        parser = subparsers.add_parser(command, help=text)
        parser.add_argument("names", nargs="*", metavar="NAME", help="target name(s)")
        parser.add_argument("--all", action="store_true", help="every target")
        if command != "start":
            parser.add_argument("--reason", default="", help="recorded in the event")
        parser.add_argument(
            "--timeout", type=_seconds, default=120.0, help="give up waiting after (s)"
        )
        parser.set_defaults(handler=operate_command)
    parser = subparsers.add_parser(
        "reload", help="re-read the configuration (like SIGHUP): apply what changed"
    )
    parser.add_argument("--timeout", type=_seconds, default=120.0, help=argparse.SUPPRESS)
    parser.set_defaults(handler=operate_command)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("expected seconds between 0 and 3600")
    return value
