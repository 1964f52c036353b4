"""Replaces one generated section of a Markdown file (BENCHMARKS.md), shared by the bench scripts."""
import os


def write_section(path, key, heading, text):
    """Puts `text` between `<!-- key:begin -->` and `<!-- key:end -->` in `path`, replacing what
    was there; appends the markers under `## heading` when the file has none yet."""
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    b, e = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = f"{b}\n{text}\n{e}"
    if b in doc and e in doc:
        doc = doc[:doc.index(b)] + section + doc[doc.index(e) + len(e):]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(doc)
