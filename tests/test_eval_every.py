"""--eval_every N: the weights equal those of a run that scores every epoch (a skipped score still draws the random
number the val loader draws), the scored epochs' numbers are the same, the others log no val keys, and the flags that
would watch the skipped epochs are refused by name."""
import pytest
import torch

import engine
import train_kd
from test_unlabeled import args_for, setup  # noqa: F401 - its data (4 labelled, train_large), light teacher, flags

# MGD's random masks and the weak/strong views' cutout draw from the global RNG after every epoch's val pass: a
# skipped pass that drew nothing would change them (seen: the weights differ without fit's iter(val_loader))
FLAGS = ["--epochs", "3", "--patience", "0", "--scheduler", "poly", "--kd_method", "response,mgd", "--mgd_hidden", "8",
         "--unlabeled", "split:train_large", "--unlabeled_views", "weak_strong", "--strong_cutout", "1"]


def test_weights_and_scored_epochs_equal_those_of_scoring_every_epoch(setup, tmp_path, capsys):
    train_kd.main(args_for(setup, tmp_path / "every", *FLAGS))
    capsys.readouterr()
    train_kd.main(args_for(setup, tmp_path / "second", *FLAGS, "--eval_every", "2"))
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch 0:" in line]
    assert lines and "val not scored (--eval_every 2) (best miou: none yet)" in lines[0]
    a, b = (torch.load(tmp_path / d / "response_mgd_last.pth", weights_only=True) for d in ("every", "second"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    every, second = a["history"], b["history"]
    assert [h["epoch"] for h in second] == [0, 1, 2]
    assert "val_miou" not in second[0] and "val_loss" not in second[0]  # epoch 0: (0 + 1) % 2 != 0
    for epoch in (1, 2):  # every second epoch, and the last
        assert second[epoch]["val_miou"] == every[epoch]["val_miou"]
        assert second[epoch]["val_loss"] == every[epoch]["val_loss"]
    assert [h["train_loss"] for h in second] == [h["train_loss"] for h in every]


def test_a_resume_before_the_first_score_says_none_yet(setup, tmp_path, capsys):
    """A run stopped after epoch 0 of --eval_every 2 has scored nothing: its resume line says so (seen: "best val
    mIoU -1.0000", the unscored start value). The checkpoint is the finished run's, set back to epoch 0 as written
    then (the stopping state and history of an unscored epoch 0)."""
    train_kd.main(args_for(setup, tmp_path / "whole", *FLAGS, "--epochs", "2", "--eval_every", "2"))
    ckpt = torch.load(tmp_path / "whole" / "response_mgd_last.pth", weights_only=False)
    assert "val_miou" not in ckpt["history"][0]
    ckpt.update(epoch=0, best_miou=-1.0, history=ckpt["history"][:1], finished=False)
    ckpt["early_stopping"].update(best=-float("inf"), bad_epochs=0)
    (tmp_path / "cut").mkdir()
    torch.save(ckpt, tmp_path / "cut" / "response_mgd_last.pth")
    capsys.readouterr()
    train_kd.main(args_for(setup, tmp_path / "cut", *FLAGS, "--epochs", "2", "--eval_every", "2", "--resume", "auto"))
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'cut' / 'response_mgd_last.pth'}: epoch 0 done, best val mIoU none yet" in out
    assert " epoch 1: " in out and "-1.0000" not in out


@pytest.mark.parametrize("flags, named", [(["--patience", "5", "--scheduler", "poly"], "--patience 5"),
                                          (["--patience", "0", "--scheduler", "plateau"], "--scheduler plateau"),
                                          (["--eval_every", "0"], "must be at least 1")])
def test_flags_that_watch_skipped_epochs_are_refused(flags, named, capsys):
    parser = train_kd.get_args_parser()
    args = parser.parse_args(["--eval_every", "3", *flags])
    with pytest.raises(SystemExit):
        engine.check_args(args, parser)
    assert named in capsys.readouterr().err


def test_the_few_label_table_counts_every_trained_epoch_not_the_scored_ones():
    """A log of 10 epochs scored every 5th (epochs 4 and 9): the table's budget is 10 epochs of steps, as the teacher
    and the students trained them (seen: 2 epochs, when the scored records were counted)."""
    import reports

    hist = [{"epoch": e, "epoch_time_s": 1.0, **({"val_miou": 0.1 * e} if e in (4, 9) else {})} for e in range(10)]
    result = reports.final_miou("", hist)
    few = {"teacher_frames": 12, "teacher_batch": 4,
           "rows": {"scratch": {"steps_per_epoch": 3, "batch": 4, "unlabeled_batch": 0, "masks": 12},
                    "response@u": {"steps_per_epoch": 3, "batch": 2, "unlabeled_batch": 2, "masks": 12}}}
    methods = {"scratch": [("scratch_s0", result)], "response@u": [("response@u_s0", result)]}
    rows = {r["method"]: r for r in reports.seeded_rows(result, methods, {"teacher": "", "regular": ""}, few)}
    assert (rows["teacher"]["steps"], rows["teacher"]["images_seen"]) == (10 * 3, 10 * 3 * 4)  # 12 // 4 a pass
    assert (rows["scratch"]["steps"], rows["scratch"]["images_seen"]) == (30, 30 * 4)
    assert (rows["response@u"]["unlabeled"], rows["response@u"]["steps"], rows["response@u"]["images_seen"]) == \
        (1, 30, 30 * (2 + 2))
