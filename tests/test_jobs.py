"""The plan and the job runner of experiments.py: which runs, with which flags (one merge, a stated order), at which
thread count, and how runner.py runs them --jobs at a time."""
import json

import pytest

import experiments
import runner

DATA = {"dataset": "voc", "root_dir": "/data", "img_size": ["64"]}


def plan(*flags, preset="demo"):
    args = experiments.get_args_parser().parse_args(["--preset", preset, *flags])
    return experiments.make_plan(args, experiments.PRESETS[preset], DATA, "/w")


# ---- threads ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps, jobs, cores, threads", [
    (5, 2, 2, [1, 1, 1, 1, 1]),  # the odd one out at the others' count, not alone at every core
    (4, 2, 2, [1, 1, 1, 1]),
    (3, 2, 16, [8, 8, 8]),
    (7, 3, 16, [5, 5, 5, 5, 5, 5, 5]),
    (2, 4, 2, [1, 1]),  # more jobs than cores: one thread each, never 0
])
def test_every_step_of_a_group_gets_the_same_threads(n_steps, jobs, cores, threads):
    assert runner.step_threads(n_steps, jobs, cores) == threads


@pytest.mark.parametrize("cores", [2, 16])
def test_a_lone_step_such_as_the_teacher_gets_every_core(cores):
    assert runner.step_threads(1, 2, cores) == [cores]


def test_jobs_auto_is_one_on_a_gpu():
    assert runner.resolve_jobs("auto", "cuda") == 1


@pytest.mark.parametrize("cores, jobs", [(1, 1), (2, 2), (16, 2)])
def test_jobs_auto_on_a_cpu_is_two_from_two_cores(monkeypatch, cores, jobs):
    monkeypatch.setattr(runner, "cpu_cores", lambda: cores)
    assert runner.resolve_jobs("auto", "cpu") == jobs


def test_jobs_given_as_a_number_is_kept():
    assert runner.resolve_jobs("3", "cuda") == 3


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_jobs_value_stops_before_any_work(bad, tmp_path):
    args = experiments.get_args_parser().parse_args(["--jobs", bad, "--out_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=f"--jobs {bad}: give a whole number"):
        experiments.main(args)
    assert not (tmp_path / "out").exists()


# ---- the plan -------------------------------------------------------------------------------------------------------
def test_the_demo_is_the_seeded_plan_with_one_seed():
    p = plan()
    assert p.teacher.name == "teacher"
    assert [r.name for r in p.students] == ["scratch_s0", "response_s0", "feature_s0", "response@u_s0",
                                            "feature@u_s0"]
    assert [r.script for r in p.students] == ["train.py"] + ["train_kd.py"] * 4


def test_a_run_is_its_flags_turned_into_argv_once():
    argv = plan().students[3].argv()
    flags = [w for w in argv if w.startswith("--")]
    assert len(flags) == len(set(flags))  # no flag twice, so no order decides which one wins
    assert argv[:5] == ["train_kd.py", "--kd_method", "response", "--model_name", "light"]
    assert argv[argv.index("--unlabeled"):argv.index("--unlabeled") + 4] == ["--unlabeled", "split:unlabeled",
                                                                             "--unlabeled_batch", "8"]
    assert argv[-2:] == ["--run_name", "response@u_s0"]


def test_to_argv_writes_switches_lists_and_values():
    assert experiments.to_argv({"geometric": True, "img_size": ["90", "120"], "epochs": 12, "x": None}) == [
        "--geometric", "--img_size", "90", "120", "--epochs", "12"]


def test_parse_extra_reads_switches_and_values():
    assert experiments.parse_extra("--amp --batch_size 4 --img_size 24 32") == {
        "amp": True, "batch_size": "4", "img_size": ["24", "32"]}
    with pytest.raises(SystemExit, match="comes before any flag"):
        experiments.parse_extra("4 --amp")


def test_student_epochs_override_the_recipe():
    assert {r.flags["epochs"] for r in plan("--student_epochs", "3").students} == {3}
    assert plan("--student_epochs", "3").teacher.flags["epochs"] == 12  # the teacher's budget is its own


def test_teacher_epochs_override_only_the_teacher():
    p = plan("--teacher_epochs", "2")
    assert p.teacher.flags["epochs"] == 2 and {r.flags["epochs"] for r in p.students} == {12}


def test_extra_reaches_every_step_below_the_recipe():
    p = plan("--extra", "--amp --batch_size 2")
    assert all(r.flags["amp"] is True for r in [p.teacher, *p.students])
    assert {r.flags["batch_size"] for r in p.students} == {8}  # the preset's recipe wins, as it always has


def test_the_run_seed_wins_over_extra():
    assert {r.flags["seed"] for r in plan("--extra", "--seed 9", "--seeds", "0,1").students} == {0, 1}


def test_only_the_seeded_table_names_the_teachers_last_checkpoint():
    """The seeded table reports last epochs, so its students learn from the teacher's last epoch; the one-seed table
    keeps train_kd.py's default (the teacher's best checkpoint)."""
    assert all("teacher_weights" not in r.flags for r in plan().students)
    seeded = plan("--seeds", "0")
    assert {r.flags.get("teacher_weights") for r in seeded.students[1:]} == {"/w/teacher_last.pth"}
    assert "teacher_weights" not in seeded.students[0].flags  # scratch has no teacher


def test_a_combination_takes_both_methods_flags():
    (run,) = [r for r in plan("--preset", "camvid", "--methods", "response+at", preset="camvid").students
              if r.method != "scratch"]
    assert run.flags["kd_method"] == "response,at" and run.flags["temperature"] == 1 and run.flags["w_at"] == 100


def test_modes_keeps_the_rows_it_names_with_the_old_names():
    p = plan("--modes", "teacher,regular")
    assert p.teacher.name == "teacher" and [r.name for r in p.students] == ["scratch_s0"]
    assert plan("--modes", "response@u").teacher is None


def test_modes_stops_on_a_row_the_table_lacks():
    with pytest.raises(SystemExit, match="no row cwd"):
        plan("--modes", "teacher,cwd")


# ---- the runner -----------------------------------------------------------------------------------------------------
def step(tmp_path, name, seconds, code=0):
    """A step that records when it ran and with how many threads, then exits with `code`."""
    script = (f"import json, os, sys, time; t0 = time.time(); print('{name} running', flush=True); "
              f"time.sleep({seconds}); print('{name} done', flush=True); "
              f"open({str(tmp_path / name)!r} + '.json', 'w').write(json.dumps("
              f"[t0, time.time(), os.environ.get('OMP_NUM_THREADS', '')])); sys.exit({code})")
    return name, ["-c", script], str(tmp_path / f"{name}.out")


def record(tmp_path, name):
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory):
    """Five steps of different lengths run two at a time on 2 cores: (folder, seconds, printed output)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("steps")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        seconds = runner.run_steps([step(tmp, f"s{i}", 0.3 + 0.1 * i) for i in range(5)], jobs=2, cores=2)
    return tmp, seconds, out.getvalue()


def test_run_steps_runs_every_step_and_times_it(five_steps):
    _, seconds, _ = five_steps
    assert sorted(seconds) == ["s0", "s1", "s2", "s3", "s4"] and all(s > 0.3 for s in seconds.values())


def test_run_steps_gives_each_step_its_planned_threads(five_steps):
    tmp, _, _ = five_steps
    assert [record(tmp, f"s{i}")[2] for i in range(5)] == ["1", "1", "1", "1", "1"]


def test_run_steps_never_runs_more_threads_than_cores(five_steps):
    tmp, _, _ = five_steps
    runs = {f"s{i}": record(tmp, f"s{i}") for i in range(5)}
    for name, (start, _, _) in runs.items():  # at every start, the threads of the steps running then fit in 2 cores
        assert sum(int(t) for s, e, t in runs.values() if s <= start < e) <= 2, name


def test_run_steps_relays_every_line_with_its_steps_name(five_steps):
    _, _, printed = five_steps
    for i in range(5):
        assert f"[s{i}] s{i} done" in printed and f"=== s{i}: ended after" in printed


def test_run_steps_keeps_each_steps_output_whole_in_its_log(five_steps):
    tmp, _, _ = five_steps
    assert [(tmp / f"s{i}.out").read_text() for i in range(2)] == ["s0 running\ns0 done\n", "s1 running\ns1 done\n"]


def test_a_failed_step_stops_the_others_and_names_its_log(tmp_path):
    steps = [step(tmp_path, "long", 60), step(tmp_path, "bad", 0.2, code=3), step(tmp_path, "never", 0.1)]
    with pytest.raises(SystemExit, match=f"step bad failed \\(exit 3\\); its output is in {tmp_path / 'bad.out'}"):
        runner.run_steps(steps, jobs=2, cores=2)
    assert (tmp_path / "long.out").read_text() == "long running\n"  # stopped before its end
    assert not (tmp_path / "never.out").exists()  # not started


def test_a_resume_keeps_the_threads_of_the_whole_plan(tmp_path):
    """Four of five steps finished: the last one runs at the plan's 1 thread, not alone at every core."""
    steps = [step(tmp_path, f"s{i}", 0.1) for i in range(5)]
    seconds = runner.run_steps(steps, jobs=2, cores=2, skip={"s0", "s1", "s2", "s3"})
    assert list(seconds) == ["s4"] and not (tmp_path / "s0.out").exists()
    assert record(tmp_path, "s4")[2] == "1"


def test_with_one_job_the_steps_run_in_turn_in_the_foreground(tmp_path, capsys):
    runner.run_steps([step(tmp_path, "a", 0.1), step(tmp_path, "b", 0.1)], jobs=1, cores=2)
    assert record(tmp_path, "a")[1] <= record(tmp_path, "b")[0]
    assert "=== a: python -c" in capsys.readouterr().out


def test_ctrl_c_reaches_each_step_once_lets_it_save_and_exits_130(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the runner's whole process group): each step gets exactly one SIGINT, from the
    runner (a second would cut a save short), and its last lines are relayed; a step that ignores SIGINT (started
    from a background shell) is ended at the grace's end; the command exits 130 with one line, no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    counting = ("import signal, sys, time; n = []; signal.signal(signal.SIGINT, lambda *a: n.append(1)); "
                "print('saver running', flush=True); t = time.time()\n"
                "while not n and time.time() - t < 60: time.sleep(0.05)\n"
                "time.sleep(1); print(f'saver saved after {len(n)} SIGINT', flush=True); sys.exit(130)")
    deaf = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('deaf running', flush=True); "
            "time.sleep(60)")
    steps = [("saver", ["-c", counting], str(tmp_path / "saver.out")),
             ("deaf", ["-c", deaf], str(tmp_path / "deaf.out"))]
    driver = (f"import runner, utils; runner.GRACE_S = 4; "
              f"utils.run_cli(lambda _: runner.run_steps({steps!r}, jobs=2, cores=2), None)")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stdout:  # the relayed lines: both steps are running
        seen.append(line)
        if sum(x.startswith(("[saver] saver running", "[deaf] deaf running")) for x in seen) == 2:
            break
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 130, err[-2000:]
    assert "[saver] saver saved after 1 SIGINT" in out, out
    assert "=== deaf: ended after" in out and time.time() - t0 < 30  # ended by the runner, not by its 60 s sleep
    assert "interrupted: the steps stopped; the same command resumes" in err and "Traceback" not in err, err
