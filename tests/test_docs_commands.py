"""Every ``campaignctl …`` command line quoted in README.md and docs/ parses: the docs never show a flag that
does not exist (``resolve --message-id``, ``migrate --to`` were such)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from campaignctl.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Placeholders the docs use, and a value of the right kind for each.
PLACEHOLDERS = {"ID": "1", "<rev>": "head", "REV": "head", "N": "2", "S": "1", "M": "m-1", "QUEUE": "market_data",
                "API": "zillow", "RATE": "10/min", "FILE": "owners.csv", "X": "market_data", "<stage>": "market_data",
                "AGE": "1h", "SPEC": "zillow:5xx=0.1", "K": "0"}


def quoted_commands() -> list[tuple[str, str]]:
    """(where, command line) for every campaignctl invocation in a code block or an inline code span."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        in_block = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            candidates = []
            if in_block or line.startswith("    "):
                candidates.append(line)
            candidates += re.findall(r"`([^`]*campaignctl[^`]*)`", line)
            for text in candidates:
                match = re.search(r"(?:^|[\s/])campaignctl(\s.*)?$", text)
                if match and match.group(1):
                    found.append((where, "campaignctl" + match.group(1)))
    return found


def argv_of(command: str) -> list[str] | None:
    """The arguments of one documented command line; None when it is a pattern, not a command."""
    text = command.replace("\\|", " | ")
    # `A | B` (alternatives in a synopsis, or a shell pipe): the first alternative; a comment or `&` ends it.
    text = text.split(" #", 1)[0].split(" | ", 1)[0].split(" &", 1)[0].strip()
    if "…" in text or "..." in text:
        return None
    text = text.replace("[", "").replace("]", "")
    words = shlex.split(text)[1:]
    if not words or not re.fullmatch(r"[a-z][a-z-]*|-.*", words[0]):
        return None  # not a command line (a diagram's box)
    if len(words) == 1 and not words[0].startswith("-"):
        return [words[0], "--help"]  # the command named in prose: it must exist
    return [PLACEHOLDERS.get(w, w) for w in words]


def test_the_docs_quote_commands() -> None:
    commands = [c for _, c in quoted_commands()]
    assert len(commands) > 40
    assert any(c.startswith("campaignctl review") for c in commands)
    assert any("limits --set" in c for c in commands)


@pytest.mark.parametrize("where,command", quoted_commands(), ids=[w for w, _ in quoted_commands()])
def test_every_quoted_command_parses(where: str, command: str) -> None:
    argv = argv_of(command)
    if argv is None:
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{where}: `{command}` does not parse (argv {argv})"
