"""Benchmark paramctl on URLs: the 1 GiB files served over loopback HTTP, against the same commands on local paths.

For each format: the bytes and requests `ls` makes (counted by the server), `ls` time remote vs local, `stat` time
remote vs local, and peak RSS. The server (tests/httpserver.py: ThreadingHTTPServer, single-range support) runs in a
child process, so it competes with paramctl for the machine's cores as a real server would not.

Run: .venv/bin/python benchmarks/bench_remote.py   (always exits 0: this is a measurement, not a test)
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from common import DATA_DIR, FORMATS, PARAMCTL, REPO_ROOT, Measurement, check, harness_rss_mb, make_checkpoints, run

LS_BYTES_TARGET = 1_000_000  # "well under 1 MB"


def _control(base: str, what: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/_{what}") as answer:  # not counted by the server
        return json.loads(answer.read())  # type: ignore[no-any-return]


def _counted(base: str, cmd: list[str]) -> dict[str, int]:
    """Requests and body bytes the server sent for one run of `cmd`."""
    _control(base, "reset")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO_ROOT)
    return _control(base, "stats")


def main() -> None:
    big = make_checkpoints("1g")
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "httpserver.py"), str(DATA_DIR)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        base = server.stdout.readline().strip()
        rows = []
        for fmt in FORMATS:
            url, local = f"{base}/{big[fmt].name}", str(big[fmt])
            ls_counts = _counted(base, PARAMCTL + ["ls", url])
            stat_counts = _counted(base, PARAMCTL + ["stat", url])
            timings: dict[str, Measurement] = {
                "ls remote": run(PARAMCTL + ["ls", url]),
                "ls local": run(PARAMCTL + ["ls", local]),
                "stat remote": run(PARAMCTL + ["stat", url], repeat=3),
                "stat local": run(PARAMCTL + ["stat", local], repeat=3),
            }
            same = run(PARAMCTL + ["stat", "--json", url], repeat=1).stdout.replace(url, local)
            if json.loads(same) != json.loads(run(PARAMCTL + ["stat", "--json", local], repeat=1).stdout):
                print(f"WARNING: stat --json of {fmt} differs remotely")
            rows.append((fmt, big[fmt].stat().st_size, ls_counts, stat_counts, timings))
    finally:
        server.kill()
        server.wait()

    print()
    print(
        f"{'file':<15} {'ls bytes':>9} {'ls reqs':>7} {'ls remote s':>11} {'ls local s':>10} {'ratio':>6}"
        f" {'stat bytes':>13} {'stat reqs':>9} {'stat remote s':>13} {'stat local s':>12} {'ratio':>6}"
        f" {'RSS ls/stat MB (remote)':>23}"
    )
    for fmt, _, ls_counts, stat_counts, t in rows:
        print(
            f"{'1g.' + fmt:<15} {ls_counts['bytes']:>9,} {ls_counts['requests']:>7}"
            f" {t['ls remote'].seconds:>11.3f} {t['ls local'].seconds:>10.3f}"
            f" {t['ls remote'].seconds / t['ls local'].seconds:>6.2f}"
            f" {stat_counts['bytes']:>13,} {stat_counts['requests']:>9}"
            f" {t['stat remote'].seconds:>13.3f} {t['stat local'].seconds:>12.3f}"
            f" {t['stat remote'].seconds / t['stat local'].seconds:>6.2f}"
            f" {t['ls remote'].peak_rss_mb:>11.1f}/{t['stat remote'].peak_rss_mb:<11.1f}"
        )
    print("(bytes: response bodies the server sent; ratio = remote seconds / local seconds)")
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()
    for fmt, size, ls_counts, stat_counts, t in rows:
        check(f"ls 1g.{fmt}: bytes transferred", ls_counts["bytes"], ls_counts["bytes"] < LS_BYTES_TARGET, "< 1 MB")
        check(f"stat 1g.{fmt}: bytes transferred / file size", stat_counts["bytes"] / size,
              stat_counts["bytes"] < size * 1.01, "< 1.01")  # fmt: skip
        rss = t["stat remote"].peak_rss_mb
        check(f"stat 1g.{fmt} remote: peak RSS (MB)", rss, rss < 150, "< 150")


if __name__ == "__main__":
    main()
