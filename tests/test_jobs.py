"""experiments.py --jobs: independent steps run several at a time, each at a thread count fixed by the plan."""
import json

import pytest

import experiments


def test_step_threads_follow_the_plan_alone():
    assert experiments.step_threads(5, 2, 2) == [1, 1, 1, 1, 2]  # the odd one out alone, at every core
    assert experiments.step_threads(4, 2, 2) == [1, 1, 1, 1]
    assert experiments.step_threads(1, 2, 2) == [2]
    assert experiments.step_threads(3, 2, 16) == [8, 8, 16]
    assert experiments.step_threads(7, 3, 16) == [5, 5, 5, 5, 5, 5, 16]
    assert experiments.step_threads(2, 4, 2) == [1, 1]  # more jobs than cores: one thread each, never 0


def test_jobs_flag():
    assert experiments.resolve_jobs("3", "cuda") == 3
    assert experiments.resolve_jobs("auto", "cuda") == 1
    assert experiments.resolve_jobs("auto", "cpu") == (2 if experiments.cpu_cores() >= 2 else 1)
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit, match=f"--jobs {bad}: give a whole number"):
            experiments.resolve_jobs(bad, "cpu")


def step(tmp_path, name, seconds, code=0):
    """A step that records when it ran and with how many threads, then exits with `code`."""
    script = (f"import json, os, sys, time; t0 = time.time(); print('{name} running', flush=True); "
              f"time.sleep({seconds}); print('{name} done', flush=True); "
              f"open({str(tmp_path / name)!r} + '.json', 'w').write(json.dumps("
              f"[t0, time.time(), os.environ['OMP_NUM_THREADS']])); sys.exit({code})")
    return name, ["-c", script], str(tmp_path / f"{name}.out")


def test_run_steps_never_runs_more_threads_than_cores(tmp_path, capsys):
    steps = [step(tmp_path, f"s{i}", 0.3 + 0.1 * i) for i in range(5)]
    seconds = experiments.run_steps(steps, jobs=2, cores=2)
    assert sorted(seconds) == [f"s{i}" for i in range(5)]
    runs = {f"s{i}": json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(5)}
    assert [runs[f"s{i}"][2] for i in range(5)] == ["1", "1", "1", "1", "2"]
    for a in runs:  # at every start, the threads of the steps running then fit in the 2 cores
        start = runs[a][0]
        busy = sum(int(r[2]) for b, r in runs.items() if r[0] <= start < r[1])
        assert busy <= 2, (a, busy)
    last = runs["s4"]
    assert all(r[1] <= last[0] for b, r in runs.items() if b != "s4")  # the 2-thread step ran alone
    out = capsys.readouterr().out
    for i in range(5):  # every line shown with its step's name, and kept whole in the step's log
        assert f"[s{i}] s{i} done" in out and f"=== s{i}: ended after" in out
        assert (tmp_path / f"s{i}.out").read_text() == f"s{i} running\ns{i} done\n"


def test_a_failed_step_stops_the_others_and_names_its_log(tmp_path):
    steps = [step(tmp_path, "long", 60), step(tmp_path, "bad", 0.2, code=3), step(tmp_path, "never", 0.1)]
    with pytest.raises(SystemExit, match=f"step bad failed \\(exit 3\\); its output is in {tmp_path / 'bad.out'}"):
        experiments.run_steps(steps, jobs=2, cores=2)
    assert (tmp_path / "long.out").read_text() == "long running\n"  # stopped before its end
    assert not (tmp_path / "never.out").exists()  # not started


def test_skipped_steps_keep_the_others_threads(tmp_path):
    """A resume skips the finished steps; the rest keep the threads the whole plan gave them."""
    steps = [step(tmp_path, f"s{i}", 0.1) for i in range(5)]
    seconds = experiments.run_steps(steps, jobs=2, cores=2, skip={"s0", "s1"})
    assert sorted(seconds) == ["s2", "s3", "s4"] and not (tmp_path / "s0.out").exists()
    assert [json.loads((tmp_path / f"s{i}.json").read_text())[2] for i in (2, 3, 4)] == ["1", "1", "2"]
