#!/usr/bin/env python3
"""Check that every relative link in every Markdown file of the repository resolves.

Usage: scripts/check-links.py [ROOT]   (default: the repository root)

Looks at inline links and images `[text](target)` and `![alt](target)` outside fenced code
blocks; skips URLs (`scheme:`) and mail links. A target resolves when the file or folder exists
relative to the Markdown file and, for `FILE.md#anchor` and `#anchor`, when a heading of that
file has that anchor (GitHub's rule: the heading's text in lower case, punctuation dropped,
spaces as hyphens, `-1`, `-2` ... for repeats). Exits 1 and lists `file:line: target` for each
broken link.
"""
import os
import re
import sys

LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
SKIP_DIRS = {'.git', 'target', 'vendor', 'node_modules'}
_anchors = {}


def slug(heading):
    """GitHub's anchor of a heading's Markdown text."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links and images: their text
    text = re.sub(r'[`*]|<[^>]+>', '', text).strip().lower()
    text = ''.join(c for c in text if c.isalnum() or c in ' -_')
    return text.replace(' ', '-')


def anchors(path):
    """The anchors of the headings of a Markdown file (outside fenced code)."""
    if path not in _anchors:
        seen, out, in_fence = {}, set(), False
        with open(path, encoding='utf-8') as f:
            for line in f:
                if line.lstrip().startswith('```'):
                    in_fence = not in_fence
                    continue
                m = None if in_fence else re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
                if m:
                    a = slug(m.group(1))
                    n = seen.get(a, 0)
                    seen[a] = n + 1
                    out.add(a if n == 0 else f'{a}-{n}')
        _anchors[path] = out
    return _anchors[path]


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), '..'))
    broken, checked = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            if not name.endswith('.md'):
                continue
            path = os.path.join(dirpath, name)
            in_fence = False
            with open(path, encoding='utf-8') as f:
                for lineno, line in enumerate(f, 1):
                    if line.lstrip().startswith('```'):
                        in_fence = not in_fence
                        continue
                    if in_fence:
                        continue
                    for target in LINK.findall(line):
                        if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target):
                            continue
                        file, _, anchor = target.partition('#')
                        full = os.path.join(dirpath, file) if file else path
                        checked += 1
                        if not os.path.exists(full):
                            broken.append(f'{os.path.relpath(path, root)}:{lineno}: {target}')
                        elif anchor and full.endswith('.md') and anchor not in anchors(full):
                            broken.append(f'{os.path.relpath(path, root)}:{lineno}: {target} (no such heading)')
    for b in broken:
        print(b)
    print(f'{checked} relative links checked, {len(broken)} broken', file=sys.stderr)
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
