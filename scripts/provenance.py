"""Provenance for result files: the command, the machine, the date and the commit.

Every JSON written into docs/results carries a top-level "provenance" object made by
`provenance(...)`; paths in it are relative to the repository root (`rel_path`, `rel_command`),
never absolute machine paths. Imported by the benchmark scripts under benches/ and scripts/;
`python3 scripts/provenance.py [--threads N] -- CMD ...` prints the object for shell scripts.
"""
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_path(simd):
    """The int8 path sprig-kernels picks (`sprig_kernels::int8_path`): "avx512-vnni" on the
    AVX-512 path of a CPU with AVX-512 VNNI and BW, "avx2" on the other AVX paths, else "portable"."""
    flags = cpu_flags()
    if simd == "avx512" and {"avx512_vnni", "avx512bw"} <= flags:
        return "avx512-vnni"
    return "avx2" if simd in ("avx512", "avx2+fma") else "portable"


def simd_path():
    """The SIMD path sprig-kernels picks on this CPU (`sprig_kernels::simd_level`: "avx512",
    "avx2+fma" or "portable"), capped as the kernels cap it by `SPRIG_SIMD`."""
    flags = cpu_flags()
    levels = ["portable"]
    if {"avx2", "fma"} <= flags:
        levels.append("avx2+fma")
        if {"avx512f", "avx512vl"} <= flags:
            levels.append("avx512")
    cap = {"portable": 0, "scalar": 0, "none": 0, "avx2": 1, "avx2+fma": 1}.get(
        os.environ.get("SPRIG_SIMD", "").strip().lower(), len(levels) - 1)
    return levels[min(cap, len(levels) - 1)]


def git_commit():
    """HEAD of the repository this script lives in, with "-dirty" when tracked files changed."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def rel_path(path):
    """A path relative to the repository root; a path outside it keeps only what identifies it
    without naming the machine (`~/...` for the home directory, the file name otherwise)."""
    if not path:
        return path
    p = os.path.abspath(os.path.expanduser(path))
    if p == ROOT or p.startswith(ROOT + os.sep):
        return os.path.relpath(p, ROOT)
    home = os.path.expanduser("~")
    if p.startswith(home + os.sep):
        return "~/" + os.path.relpath(p, home)
    return os.path.basename(p)


_ABS = re.compile(r"(?<![\w.~-])(/[^\s'\"`]+)")


def rel_command(cmd):
    """A command line with every absolute path rewritten by `rel_path`."""
    return _ABS.sub(lambda m: rel_path(m.group(1)), cmd)


def provenance(command, threads=None, extra=None):
    """The provenance object: command (list or string), machine (CPU model, SIMD path, threads,
    CPUs), date (UTC, ISO 8601) and commit."""
    if isinstance(command, (list, tuple)):
        command = " ".join(shlex.quote(c) for c in command)
    if threads is None:
        threads = os.environ.get("RAYON_NUM_THREADS") or os.cpu_count()
    p = {
        "command": rel_command(command),
        "machine": {"cpu": cpu_model(), "simd": simd_path(), "int8": int8_path(simd_path()), "threads": int(threads),
                    "cpus": os.cpu_count()},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
    }
    if extra:
        p.update(extra)
    return p


if __name__ == "__main__":
    args = sys.argv[1:]
    threads = None
    if len(args) >= 2 and args[0] == "--threads":
        threads, args = args[1], args[2:]
    if args and args[0] == "--":
        args = args[1:]
    print(json.dumps(provenance(" ".join(args), threads), indent=1))
