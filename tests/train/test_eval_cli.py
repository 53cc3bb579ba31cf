"""`fastrlhf eval --task preference`: gold reward and KL to the reference, on one line."""

import re

from fastrlhf.cli import main
from fastrlhf.tasks import preference


def test_eval_preference_reports_gold_reward_and_kl(capsys):
    code = main(["eval", str(preference.policy_dir()), "--task", "preference", "--eval-size", "16"])
    out = capsys.readouterr().out
    assert code == 0
    gold = float(re.search(r"gold reward (-?[0-9.]+)", out).group(1))
    kl = float(re.search(r"KL to reference (-?[0-9.]+)", out).group(1))
    assert 0.5 < gold < 2.0  # the SFT policy: far from the optimum 2.0, far above a random string
    assert kl == 0.0  # the policy measured against itself


def test_eval_rejects_a_bad_eval_size(capsys):
    assert main(["eval", str(preference.policy_dir()), "--task", "preference", "--eval-size", "0"]) == 2
    assert "--eval-size" in capsys.readouterr().err
