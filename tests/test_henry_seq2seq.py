"""The synthetic seq2seq task: where the generator puts source, separator and target, the loss mask, a
fixed evaluation set, and the task's scores on hand-built models."""
import math

import numpy as np
import pytest
import torch

from softrepro.methods.attention.decoder import Decoder
from softrepro.methods.attention.seq2seq import IGNORE, evaluate_seq2seq, rows, seq2seq, seq2seq_scores
from softrepro.registry import GENERATORS, TASKS


@pytest.mark.parametrize("mode", ["reverse", "copy"])
def test_rows_hold_source_separator_and_target_with_the_loss_on_the_target_only(mode):
    x, y = rows(np.random.default_rng(0), 30, length=6, n_symbols=5, mode=mode)
    assert x.shape == y.shape == (30, 12) and x.dtype == y.dtype == np.int64
    for row, tgt in zip(x, y):
        src = row[:6]
        want = src[::-1] if mode == "reverse" else src
        assert ((src >= 0) & (src < 5)).all() and row[6] == 5  # symbols, then the separator (id n_symbols)
        assert (row[7:] == want[:5]).all()  # the target given so far (teacher forcing)
        assert (tgt[6:] == want).all() and (tgt[:6] == IGNORE).all()  # the separator predicts the first target
    assert len({tuple(r) for r in x[:, :6]}) == 30  # random sources


def test_generator_splits_follow_the_seed_and_the_evaluation_set_is_fixed():
    a = seq2seq(0, length=4, n_symbols=3, n_train=50, n_eval=20)
    b = seq2seq(1, length=4, n_symbols=3, n_train=50, n_eval=20)
    (xtr, ytr), (xte, yte) = a["train"], a["test"]
    assert xtr.shape == (50, 8) and xte.shape == yte.shape == (20, 8) and a["n_outputs"] == 4
    assert np.array_equal(xte, b["test"][0]) and np.array_equal(yte, b["test"][1])  # same evaluation set
    assert not np.array_equal(xtr, b["train"][0])  # training sets follow the seed
    assert np.array_equal(xtr, seq2seq(0, length=4, n_symbols=3, n_train=50, n_eval=5)["train"][0])
    assert (yte[:, 4:] == xte[:, 3::-1]).all()  # reverse is the default
    assert GENERATORS.get("seq2seq") is seq2seq and TASKS.get("seq2seq") is evaluate_seq2seq


@pytest.mark.parametrize("kw, match", [
    ({"mode": "sort"}, "mode must be one of reverse, copy"),
    ({"length": 0}, "length must be a positive integer"),
    ({"length": 2.5}, "length must be a positive integer"),
    ({"n_symbols": 1}, "n_symbols must be an integer of at least 2"),
    ({"n_train": 0}, "n_train and n_eval"),
    ({"n_eval": 0}, "n_train and n_eval"),
])
def test_bad_parameters_say_what_is_wrong(kw, match):
    with pytest.raises(ValueError, match=match):
        seq2seq(0, **kw)


class Oracle(torch.nn.Module):
    """Logits one-hot (10 against 0) on the right target symbol at every target position, or on a wrong
    one (``wrong``): the symbol one above it, mod n_symbols.  Positions before the separator: symbol 0."""

    def __init__(self, length, n_symbols, mode, wrong=False):
        super().__init__()
        self.length, self.n, self.mode, self.wrong = length, n_symbols, mode, wrong

    def forward(self, x):
        src = x[:, : self.length]
        tgt = src.flip(1) if self.mode == "reverse" else src
        ans = torch.zeros_like(x)
        ans[:, self.length :] = (tgt + 1) % self.n if self.wrong else tgt
        return 10.0 * torch.nn.functional.one_hot(ans, self.n + 1).float()


@pytest.mark.parametrize("mode", ["reverse", "copy"])
def test_scores_are_one_for_an_always_right_model_and_zero_for_an_always_wrong_one(mode):
    d = seq2seq(3, length=5, n_symbols=4, mode=mode, n_train=8, n_eval=40)
    x, y = (torch.from_numpy(a) for a in d["test"])
    right = seq2seq_scores(Oracle(5, 4, mode), x, y, tokens_per_batch=30)  # several batches
    assert right["seq2seq_acc"] == right["seq2seq_token_acc"] == 1.0
    # loss of a one-hot logit of 10 among 5 classes: log(1 + 4 e^-10)
    assert right["test_loss"] == pytest.approx(math.log(1 + 4 * math.exp(-10)), abs=1e-6)
    wrong = evaluate_seq2seq(Oracle(5, 4, mode, wrong=True), None, x, y, final=True)
    assert wrong["seq2seq_acc"] == wrong["seq2seq_token_acc"] == 0.0 and wrong["diverged"] == 0.0
    assert wrong["test_loss"] == pytest.approx(10 + math.log(1 + 4 * math.exp(-10)), rel=1e-4)


def test_half_right_rows_count_for_tokens_not_for_exact_match_and_uniform_logits_cost_log_v():
    x, y = (torch.from_numpy(a) for a in rows(np.random.default_rng(1), 12, length=4, n_symbols=6))

    class FirstHalf(Oracle):  # right on the first 2 target symbols, wrong on the last 2
        def forward(self, x):
            good, bad = Oracle.forward(self, x), Oracle(4, 6, "reverse", wrong=True).forward(x)
            return torch.cat([good[:, :6], bad[:, 6:]], 1)

    s = seq2seq_scores(FirstHalf(4, 6, "reverse"), x, y)
    assert s["seq2seq_acc"] == 0.0 and s["seq2seq_token_acc"] == 0.5
    flat = seq2seq_scores(lambda xb: torch.zeros(*xb.shape, 7), x, y)
    assert flat["test_loss"] == pytest.approx(math.log(7))  # 6 symbols and the separator
    assert flat["seq2seq_token_acc"] == pytest.approx(float((y[:, 4:] == 0).float().mean()))  # argmax of ties: id 0


def test_the_decoder_runs_the_task_with_qknorm_and_reports_its_final_measures():
    torch.manual_seed(0)
    d = seq2seq(0, length=3, n_symbols=4, n_train=4, n_eval=10)
    x, y = (torch.from_numpy(a) for a in d["test"])
    model = Decoder((x.shape[1],), d["n_outputs"], d=16, layers=1, heads=2, qk_norm="l2")
    assert model.blocks[0].attn.g.item() == pytest.approx(math.log2(6**2 - 6))  # g0 from the 6-position row
    model(x)  # a training-mode pass keeps the measures that final_ reports
    model.eval()
    out = evaluate_seq2seq(model, None, x, y, final=True)
    assert 0.0 <= out["seq2seq_acc"] <= out["seq2seq_token_acc"] <= 1.0 and math.isfinite(out["test_loss"])
    assert "final_attn_entropy_min" in out


def test_malformed_targets_are_refused():
    x, y = (torch.from_numpy(a) for a in rows(np.random.default_rng(0), 3, length=2, n_symbols=3))
    with pytest.raises(ValueError, match="target position in every row"):
        seq2seq_scores(Oracle(2, 3, "reverse"), x, torch.full_like(y, IGNORE))
    with pytest.raises(ValueError, match="must be \\[rows, length\\] alike"):
        seq2seq_scores(Oracle(2, 3, "reverse"), x, y[:, :3])
