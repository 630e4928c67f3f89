"""Why edgec runs numpy's BLAS single-threaded (edgec/isolation.py): threaded OpenBLAS + a fork on another thread.

The main thread makes threaded BLAS calls (np.dot of a 400x400 matrix, np.linalg.norm of 2M values, as
edgec.accuracy.compare does); a second thread starts multiprocessing 'fork' processes, as OpenVINO's
telemetry sender does. Each setting runs in a child process for `--seconds`; a child that stops making
progress for 10 s is reported as hung and killed (SIGTERM cannot stop it: the thread never returns to Python).

    python benchmarks/fork_race.py     # threaded BLAS without forks, with forks; one BLAS thread with forks
"""
from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import threading
import time


def race(setting: str, seconds: float) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits

    forks = 0
    stop = threading.Event()

    def forker() -> None:
        nonlocal forks
        ctx = multiprocessing.get_context("fork")
        while not stop.is_set():
            p = ctx.Process(target=time.sleep, args=(0,), daemon=True)
            p.start()
            p.join()
            forks += 1

    a, v = np.random.rand(400, 400), np.random.rand(2_000_000)
    blas_threads, fork = setting.split(",")
    limit = None if blas_threads == "default" else int(blas_threads)
    with threadpool_limits(limits=limit, user_api="blas"):
        if fork == "fork":
            threading.Thread(target=forker, daemon=True).start()
        t0, calls = time.time(), 0
        while time.time() - t0 < seconds:
            a @ a
            np.linalg.norm(v)
            calls += 1
            print(f"progress {calls} {forks}", flush=True)
    stop.set()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        race(args.child, args.seconds)
        return
    import numpy as np
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"numpy {np.__version__}; " + "; ".join(f"{i['internal_api']} {i['version']} ({i['num_threads']} threads, "
                                                  f"{i['architecture']})" for i in blas))
    for setting in ("default,no-fork", "default,fork", "1,fork"):
        proc = subprocess.Popen([sys.executable, __file__, "--child", setting, "--seconds", str(args.seconds)],
                                stdout=subprocess.PIPE, text=True)
        last, calls, forks, t0 = time.time(), 0, 0, time.time()
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        while proc.poll() is None and time.time() - last < 10:
            time.sleep(0.5)
            if lines:
                _, c, f = lines[-1].split()
                if int(c) != calls:
                    calls, forks, last = int(c), int(f), time.time()
        hung = proc.poll() is None
        if hung:
            proc.kill()
        proc.wait()
        threads, fork = setting.split(",")
        print(f"BLAS threads {threads:>7}, {fork + 'ing thread':>16}: {'HUNG' if hung else 'ok  '} after {calls} BLAS call pairs and {forks} forks "
              f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
