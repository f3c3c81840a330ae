"""The job runner of experiments.py: each step a script in its own process, `--jobs` at a time, at a thread count
the plan fixes, its output relayed line by line and kept in a file; a failed step stops the others.

    runner.run_steps([("scratch_s0", ["train.py", ...], "runs/demo/scratch_s0.out"), ...], jobs=2)

Kept apart from experiments.py (DeiT's run_with_submitit.py beside main.py), so it is tested alone
(tests/test_jobs.py) with steps that only sleep.
"""
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GRACE_S = 30  # seconds a step has to save its weights after a Ctrl-C


def cpu_cores():
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_jobs(jobs, device):
    """--jobs auto: 2 on a CPU of 2 cores or more (two 1-thread trainings beat one 2-thread one: torch's threads
    scale poorly on small steps), 1 on a GPU (one device) or a single core."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise SystemExit(f"--jobs {jobs}: give a whole number of 1 or more, or auto")
        return int(jobs)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 2 if device == "cpu" and cpu_cores() >= 2 else 1


def step_threads(n_steps, jobs, cores):
    """Threads of each of n_steps independent steps run `jobs` at a time: cores // jobs for every one of them (a
    lone step, such as the teacher, at every core). Every step of one group gets the same count, the last of an odd
    group included: the count orders float sums, so it is part of a run's draw, and students that are compared
    must differ only by what the table compares. A function of the plan alone, never of timing, so a re-run or a
    resume gives every step the threads it had."""
    return [max(1, cores // max(1, min(jobs, n_steps)))] * n_steps


def interrupt(procs, settle=None):
    """After a Ctrl-C: give each step still running GRACE_S to stop on SIGINT (saving RUN_interrupted.pth), then end
    it; say how to go on. Each step runs in its own session, so that a terminal's Ctrl-C reaches it once, from here
    (a second SIGINT would cut its save short); one started from a background shell ignores SIGINT, and is ended at
    the grace's end.
    settle(deadline): the pool's wait, which lets the relays show the steps' last lines as they end."""
    deadline = time.time() + GRACE_S
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    if settle:
        settle(deadline)
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
    if settle:
        settle(time.time() + 5)  # the ended ones' last lines too
    print("interrupted: the steps stopped; the same command resumes each from its last finished epoch",
          file=sys.stderr, flush=True)


def progress_line(line):
    return "it/s]" in line or "s/it]" in line


def run_step(name, argv, log_path):
    """One script in its own process, in the foreground; its output is shown and kept in log_path. Returns its
    wall seconds."""
    t0 = time.time()
    print(f"\n=== {name}: python {' '.join(argv)}", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # see interrupt()
        try:
            for line in proc.stdout:
                log.write(line)
                if not progress_line(line):
                    print(line, end="", flush=True)
            proc.wait()
        except KeyboardInterrupt:
            interrupt([proc])
            raise
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed (exit {proc.returncode}); its output is in {log_path}")
    return time.time() - t0


def run_steps(steps, jobs, cores=None, skip=()):
    """Run independent steps [(name, argv, log_path)] `jobs` at a time, each at its step_threads count over the
    whole list (OMP_NUM_THREADS), but those named in `skip` (finished ones: a resume keeps every step's threads);
    with jobs 1, one after another as run_step. A step starts when the threads it needs are free, so no more
    threads than cores run at once. Each step's lines are kept in its log and shown as they come, prefixed with its
    name. A failed step stops the others (each resumes from its last epoch on a re-run) and names its log.
    Returns {name: wall seconds}."""
    if jobs <= 1:
        return {name: run_step(name, argv, log) for name, argv, log in steps if name not in skip}
    cores = cores or cpu_cores()
    pending = [(s, t) for s, t in zip(steps, step_threads(len(steps), jobs, cores)) if s[0] not in skip]
    return _Pool(cores).run(pending)


class _Pool:
    """The steps running now, their threads, and the first failure; one condition guards them all."""

    def __init__(self, cores):
        self.cores, self.running, self.seconds, self.failed = cores, {}, {}, []  # running: name -> (process, threads)
        self.changed = threading.Condition()

    def run(self, pending):
        with self.changed:
            try:
                while (pending or self.running) and not self.failed:
                    free = self.cores - sum(t for _, t in self.running.values())
                    if pending and (not self.running or pending[0][1] <= free):
                        self.start(*pending.pop(0))
                    else:
                        self.changed.wait()
                if self.failed:
                    self.stop_all()
                    while self.running:
                        self.changed.wait()
                    raise SystemExit(self.failed[0])
            except KeyboardInterrupt:
                interrupt([proc for proc, _ in self.running.values()], settle=self.settle)
                raise
        return self.seconds

    def start(self, step, threads):
        name, argv, log_path = step
        print(f"\n=== {name} (started, {threads} thread{'s' * (threads > 1)}): python {' '.join(argv)}", flush=True)
        proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                start_new_session=True)  # see interrupt()
        self.running[name] = (proc, threads)
        threading.Thread(target=self.relay, args=(name, proc, log_path, time.time()), daemon=True).start()

    def relay(self, name, proc, log_path, t0):
        with open(log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                if not progress_line(line):
                    with self.changed:
                        print(f"[{name}] {line}", end="", flush=True)
        proc.wait()
        with self.changed:
            self.seconds[name] = time.time() - t0
            self.running.pop(name)
            print(f"=== {name}: ended after {self.seconds[name]:.0f} s (exit {proc.returncode})", flush=True)
            if proc.returncode != 0:
                self.failed.append(f"step {name} failed (exit {proc.returncode}); its output is in {log_path}")
            self.changed.notify_all()

    def settle(self, deadline):
        while self.running and time.time() < deadline:
            self.changed.wait(timeout=1)

    def stop_all(self):
        for proc, _ in self.running.values():
            proc.terminate()
