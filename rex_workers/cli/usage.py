"""What ``rex`` says when docopt refuses the arguments: the wrong word, a guess, the usage.

docopt only knows that some arguments were left unmatched ("found unmatched
(duplicate?) arguments"); a person wants to hear that ``statsu`` is not a
command and that ``status`` is. The commands and options are read from the
usage string itself, so this never disagrees with it.

Pure: text in, text out (``rex.py`` prints it and exits 2).
"""

from __future__ import annotations

import difflib
import re

_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def usage_section(doc: str) -> str:
    """The "Usage:" block of the docstring, up to its first blank line."""
    start = doc.index("Usage:")
    end = doc.find("\n\n", start)
    return doc[start:end if end >= 0 else None]


def commands(doc: str) -> list[str]:
    """The command words of the usage lines (``--init`` and ``--version`` are options)."""
    found = []
    for line in usage_section(doc).splitlines()[1:]:
        words = line.split()
        if len(words) > 1 and words[1][0].isalpha() and words[1] not in found:
            found.append(words[1])
    return found


def options(doc: str, command: str = "") -> set[str]:
    """Every option of the usage string, or those ``rex <command>`` takes (with their aliases)."""
    if not command:
        return set(_OPTION.findall(doc))
    own = {o for line in usage_section(doc).splitlines()[1:] if line.split()[1:2] == [command]
           for o in _OPTION.findall(line)}
    for line in doc[doc.index("Options:"):].splitlines()[1:]:
        names = set(_OPTION.findall(line.strip().split("  ")[0]))  # "-w N, --workers N"
        if names & own:
            own |= names
    return own | {"-h", "--help"}


def guess(word: str, choices: list[str] | set[str]) -> str:
    """" (did you mean X?)" for a near miss, else ""."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def explain(doc: str, argv: list[str], docopt_message: str) -> str:
    """The lines to print instead of docopt's message (which ends with the whole usage)."""
    known = commands(doc)
    usage = usage_section(doc)
    docopt_message = docopt_message.replace(usage, "")
    first = argv[0] if argv else ""
    if not first:
        return f"rex: which command? (`rex --help` explains each)\n{usage}"
    if not first.startswith("-") and first not in known:
        return f"rex: unknown command {first!r}{guess(first, known)}\n{usage}"
    lines = []
    allowed = options(doc, first if first in known else "")
    where = f" for `rex {first}`" if first in known else ""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if _OPTION.fullmatch(name) and name not in allowed:
            lines.append(f"rex: unknown option {name}{where}{guess(name, allowed)}")
    if not lines:
        said = "" if "unmatched" in docopt_message else docopt_message.strip()
        what = f"`rex {first}`" if first in known else "rex"
        lines.append(f"rex: {said}" if said else f"rex: wrong arguments for {what}")
    if first in known:  # only the usage lines of that command
        own = [line for line in usage.splitlines()[1:] if line.split()[1:2] == [first]]
        usage = "\n".join(["Usage:", *own])
    return "\n".join(lines) + "\n" + usage
