"""mkdocs hook: the README is the guide's home page (one text for GitHub and the docs site).

Links from the README into docs/ are rewritten to the site's pages; links to other files of the repository
(benchmarks/README.md) become plain text naming the file, since the site does not carry them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def _site_markdown(readme: str) -> str:
    readme = readme.replace("](docs/", "](")

    def outside(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "#")) or not target.endswith(".md") or "/" not in target:
            return match.group(0)
        return f"{text} (`{target}` in the repository)"

    return re.sub(r"\[([^\]]*)\]\(([^)]+)\)", outside, readme)


def on_files(files: Files, config) -> Files:
    text = _site_markdown((ROOT / "README.md").read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files
