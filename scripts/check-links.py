#!/usr/bin/env python3
"""Check that every relative link in every Markdown file of the repository resolves.

Usage: scripts/check-links.py [ROOT]   (default: the repository root)

Looks at inline links and images `[text](target)` and `![alt](target)` outside fenced code
blocks; skips URLs (`scheme:`), pure anchors (`#...`) and mail links. A target resolves when the
file or folder exists relative to the Markdown file. Exits 1 and lists `file:line: target` for
each broken link.
"""
import os
import re
import sys

LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
SKIP_DIRS = {'.git', 'target', 'vendor', 'node_modules'}


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
                        if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target) or target.startswith('#'):
                            continue
                        target = target.split('#', 1)[0]
                        if not target:
                            continue
                        checked += 1
                        if not os.path.exists(os.path.join(dirpath, target)):
                            broken.append(f'{os.path.relpath(path, root)}:{lineno}: {target}')
    for b in broken:
        print(b)
    print(f'{checked} relative links checked, {len(broken)} broken', file=sys.stderr)
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
