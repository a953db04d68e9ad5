"""How many CPU threads, and how they wait: ``python src/bench.py --thread-policy``.

Each measurement is a fresh process (OpenMP reads its wait policy once, when PyTorch loads it) that trains
adder ResNet-20 for a few steps and prints its images per second. Side by side in one run:

1. after a CPU-heavy minute (every core busy, as during an install), on the now idle machine: the threads that
   ``threads=auto`` takes, against the number the 1-minute load average would have left;
2. the idle machine: 1 thread, and every core with OpenMP threads that spin while waiting (libgomp's default)
   and that sleep (``OMP_WAIT_POLICY=PASSIVE``, what the project sets);
3. the same with one core kept busy by another process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from addernet.system import available_cores

SPIN, PASSIVE = "spin, then sleep (libgomp's default)", "sleep (OMP_WAIT_POLICY=PASSIVE)"
LIBGOMP_DEFAULT_SPINCOUNT = 300_000  # libgomp's spin count when no wait policy is set


@dataclass
class Run:
    condition: str
    threads: int
    policy: str
    img_per_s: float


def _busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
        p.wait()


def measure(threads: int | str, policy: str, batch: int, steps: int) -> tuple[int, float]:
    """(threads used, img/s) of adder ResNet-20 training steps in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if policy == SPIN:
        env["GOMP_SPINCOUNT"] = str(LIBGOMP_DEFAULT_SPINCOUNT)  # addernet then leaves the wait policy alone
    out = subprocess.run([sys.executable, "-m", "addernet.experiments.threads_benchmark", "--child", str(threads),
                          str(batch), str(steps)], env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["threads"], result["img_per_s"]


def child(threads: str, batch: int, steps: int) -> None:
    import torch
    import torch.nn.functional as F

    from addernet.models import create_model
    from addernet.system import configure_threads

    used = configure_threads("auto" if threads == "auto" else int(threads))
    torch.manual_seed(0)
    model = create_model("adder_resnet20", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(2):  # compile and warm up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"threads": used, "img_per_s": batch * steps / (time.perf_counter() - start)}))


def run(batch: int = 64, steps: int = 6, heat_seconds: int = 60) -> str:
    cores = available_cores()
    lines = [f"adder ResNet-20 training steps, batch {batch}, {steps} steps per measurement, {cores} cores", ""]
    heaters = _busy_processes(cores)
    time.sleep(heat_seconds)
    _stop(heaters)
    load_rule = max(1, cores - round(os.getloadavg()[0]))
    used, auto_rate = measure("auto", PASSIVE, batch, steps)
    lines.append(f"After {heat_seconds} s with every core busy, on the idle machine: threads=auto takes {used} "
                 f"thread(s), {auto_rate:.1f} img/s; the load-average rule would have taken {load_rule} "
                 f"(1-minute load {os.getloadavg()[0]:.2f}).")
    runs = []
    for condition, busy in (("idle", 0), ("one core busy", 1)):
        others = _busy_processes(busy)
        try:
            for threads, policy in ((1, PASSIVE), (cores, SPIN), (cores, PASSIVE)):
                runs.append(Run(condition, threads, policy, measure(threads, policy, batch, steps)[1]))
        finally:
            _stop(others)
    lines += ["", "| machine | threads | OpenMP threads wait | img/s | vs 1 thread |", "|---|---|---|---|---|"]
    for r in runs:
        one = next(o.img_per_s for o in runs if o.condition == r.condition and o.threads == 1)
        lines.append(f"| {r.condition} | {r.threads} | {'-' if r.threads == 1 else r.policy} | {r.img_per_s:.1f} | "
                     f"{r.img_per_s / one:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
