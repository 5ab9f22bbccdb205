"""The synthetic passkey task: where the generator puts the key, the query and the answer, a fixed
evaluation set, and the task's scores on hand-built models."""
import math

import numpy as np
import pytest
import torch

from softrepro.methods.attention.decoder import Decoder
from softrepro.methods.attention.passkey import (FILLER, IGNORE, KEY, QUERY, evaluate_passkey, passkey, passkey_scores,
                                                 row_lengths, sequences)
from softrepro.registry import GENERATORS, TASKS


def test_sequences_put_the_marked_key_where_they_say_and_the_query_at_the_end():
    x, y, p = sequences(np.random.default_rng(0), 50, 24, key_len=3, n_filler=4)
    assert x.shape == y.shape == (50, 24) and x.dtype == y.dtype == np.int64
    for row, tgt, at in zip(x, y, p):
        key = row[at + 1 : at + 4]
        assert row[at] == KEY and (key < 10).all()
        assert row[21] == QUERY and (row[22:] == key[:2]).all()  # the query, then the answer given so far
        assert (tgt[21:] == key).all() and (tgt[:21] == IGNORE).all()  # the answer is the targets' last 3
        rest = np.delete(row, [at, at + 1, at + 2, at + 3, 21, 22, 23])
        assert ((rest >= FILLER) & (rest < FILLER + 4)).all()  # everything else is filler: no digit, no marker
        # the sequence has 24 + 1 symbols: 24 - 2 * 3 - 1 = 17 filler symbols, the key after 0..17 of them
    assert p.min() >= 0 and p.max() <= 17 and len(set(p.tolist())) > 5


def test_stratified_depths_cover_the_range():
    _, _, p = sequences(np.random.default_rng(1), 10, 64, key_len=5, stratified=True)
    f = 64 - 11  # filler symbols
    assert all(math.floor(i * (f + 1) / 10) <= at < (i + 1) * (f + 1) / 10 for i, at in enumerate(p.tolist()))


def test_generator_splits_lengths_and_a_fixed_evaluation_set():
    a = passkey(0, context=16, key_len=2, n_filler=5, n_train=40, n_eval=6, multiples=[1, 2, 4])
    b = passkey(1, context=16, key_len=2, n_filler=5, n_train=40, n_eval=6, multiples=[1, 2, 4])
    (xtr, ytr), (xte, yte) = a["train"], a["test"]
    assert xtr.shape == ytr.shape == (40, 16) and xte.shape == yte.shape == (18, 64)
    assert a["n_outputs"] == 12 + 5 and len(a["vocab"]) == 17 and "".join(a["vocab"][:12]) == "0123456789#?"
    assert row_lengths(torch.from_numpy(yte)).tolist() == [16] * 6 + [32] * 6 + [64] * 6
    assert (xte[:6, 16:] == 0).all() and (yte[:6, 16:] == IGNORE).all()  # right padding, never read
    assert np.array_equal(xte, b["test"][0]) and np.array_equal(yte, b["test"][1])  # same evaluation set for every seed
    assert not np.array_equal(xtr, b["train"][0])  # training sets follow the seed
    assert np.array_equal(xtr, passkey(0, context=16, key_len=2, n_filler=5, n_train=40, n_eval=6)["train"][0])
    # a length's sequences do not depend on which other lengths are asked for
    c = passkey(0, context=16, key_len=2, n_filler=5, n_train=40, n_eval=6, multiples=[4])
    assert np.array_equal(c["test"][0], xte[12:]) and np.array_equal(c["test"][1], yte[12:])
    assert GENERATORS.get("passkey") is passkey and TASKS.get("passkey") is evaluate_passkey


@pytest.mark.parametrize("kw, match", [
    ({"key_len": 0}, "key_len"),
    ({"context": 11, "key_len": 5}, "context 11 is too short"),
    ({"n_filler": 27}, "n_filler"),
    ({"multiples": [1, 1]}, "distinct positive"),
    ({"multiples": [0, 2]}, "distinct positive"),
    ({"multiples": [1.5]}, "distinct positive"),
    ({"n_eval": 0}, "n_eval"),
])
def test_generator_rejects_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        passkey(0, **{"context": 16, "key_len": 2, **kw})


class Oracle(torch.nn.Module):
    """Reads the key after the marker and predicts it after the query; ``wrong`` shifts every digit by one;
    ``miss`` spoils the last answer digit of the rows longer than ``miss``."""

    def __init__(self, context, vocab, wrong=False, miss=None):
        super().__init__()
        self.context, self.vocab, self.wrong, self.miss = context, vocab, wrong, miss

    def forward(self, ids):
        b, t = ids.shape
        out = torch.zeros(b, t, self.vocab)
        for i in range(b):
            at = int((ids[i] == KEY).nonzero()[0])
            q = int((ids[i] == QUERY).nonzero()[-1])
            for j in range(t - q):
                digit = int(ids[i, at + 1 + j])
                if self.wrong or (self.miss is not None and t > self.miss and q + j == t - 1):
                    digit = (digit + 1) % 10
                out[i, q + j, digit] = 5.0
        return out


def _data(**kw):
    d = passkey(0, **{"context": 16, "key_len": 3, "n_filler": 4, "n_train": 4, "n_eval": 5, "multiples": [1, 2, 4], **kw})
    return d["n_outputs"], torch.from_numpy(d["test"][0]), torch.from_numpy(d["test"][1])


def test_scores_of_hand_built_models():
    v, x, y = _data()
    right = passkey_scores(Oracle(16, v), x, y)
    assert {right[f"passkey_acc_x{m}"] for m in (1, 2, 4)} == {1.0}
    assert {right[f"passkey_digit_acc_x{m}"] for m in (1, 2, 4)} == {1.0}
    # the answer loss: each answer logit row has 5 on the right digit and 0 elsewhere
    assert right["passkey_loss_x1"] == pytest.approx(math.log(math.exp(5) + v - 1) - 5, rel=1e-5)
    wrong = passkey_scores(Oracle(16, v, wrong=True), x, y)
    assert {wrong[f"passkey_acc_x{m}"] for m in (1, 2, 4)} == {0.0}
    assert {wrong[f"passkey_digit_acc_x{m}"] for m in (1, 2, 4)} == {0.0}
    # one digit of three wrong at 2x and 4x: no key retrieved whole there, two thirds of the digits right
    partial = passkey_scores(Oracle(16, v, miss=16), x, y)
    assert partial["passkey_acc_x1"] == 1.0 and partial["passkey_acc_x2"] == partial["passkey_acc_x4"] == 0.0
    assert partial["passkey_digit_acc_x4"] == pytest.approx(2 / 3)
    assert "passkey_key_attn_x1" not in right  # no attention layers to measure
    assert set(passkey_scores(Oracle(16, v), x, y, multiples=[2])) == {"passkey_acc_x2", "passkey_digit_acc_x2",
                                                                       "passkey_loss_x2"}


def test_task_scores_the_training_length_during_training_and_all_lengths_at_the_end():
    v, x, y = _data()
    during = evaluate_passkey(Oracle(16, v), None, x, y)
    assert set(during) == {"passkey_acc_x1", "passkey_digit_acc_x1", "passkey_loss_x1", "test_loss"}
    final = evaluate_passkey(Oracle(16, v), None, x, y, final=True)
    assert final["passkey_acc_x4"] == 1.0 and final["diverged"] == 0.0 and final["test_loss"] == final["passkey_loss_x1"]


def test_task_errors_clearly_on_bad_inputs():
    v, x, y = _data()
    with pytest.raises(ValueError, match="not a multiple of the model's training context 24"):
        passkey_scores(Oracle(24, v), x, y)
    with pytest.raises(ValueError, match="training context as `context`"):
        passkey_scores(torch.nn.Identity(), x, y)
    with pytest.raises(ValueError, match="no passkey test rows at \\[8\\]"):
        passkey_scores(Oracle(16, v), x, y, multiples=[8])
    y2 = y.clone()
    y2[3] = IGNORE
    with pytest.raises(ValueError, match="row 3 has no answer position"):
        passkey_scores(Oracle(16, v), x, y2)
    with pytest.raises(ValueError, match="differ in shape"):
        passkey_scores(Oracle(16, v), x[:, :32], y)


@pytest.mark.parametrize("attention", ["softmax", {"name": "ssmax", "s_init": 2.0}, {"name": "lssar", "p": 3}])
def test_key_attention_share_of_a_decoder_matches_its_weights(attention):
    """The measured share (from the query rows alone), recomputed here from one layer's full weights."""
    from softrepro.methods.attention.normalisations import attended

    v, x, y = _data(multiples=[1, 2])
    torch.manual_seed(0)
    model = Decoder((16,), v, d=16, layers=1, heads=2, attention=attention).eval()
    out = passkey_scores(model, x, y)
    assert 0 < out["passkey_key_attn_x1"] < 1 and 0 <= out["passkey_acc_x2"] <= 1
    attn = model.blocks[0].attn
    rows = (row_lengths(y) == 16).nonzero().flatten()
    xs = x[rows, :16]
    with torch.no_grad():
        h = model.blocks[0].ln1(model.embed(xs))
        q, k, _ = attn.qkv(h).view(len(xs), 16, 3, 2, 8).permute(2, 0, 3, 1, 4)
        mask, n = attended(16)
        w = attn.norm(attn.logits(q, k, cosine=getattr(attn.norm, "cosine_logits", False)), mask, n)
    shares = torch.zeros(2)
    for i, row in enumerate(xs):
        at = int((row == KEY).nonzero()[0])
        query = w[i, :, 16 - 3]  # the query marker stands at 16 - key_len
        shares += query[:, at : at + 4].sum(-1) / query.sum(-1)  # the marker and the 3 digits
    assert out["passkey_key_attn_x1"] == pytest.approx(float((shares / len(xs)).max()), rel=1e-5)


def test_a_decoder_trains_on_passkey_through_the_training_loop(tmp_path):
    """The answer-only targets (IGNORE elsewhere) through the real training loop, a handful of steps."""
    from softrepro.spec import repo_root
    from softrepro.train import train

    exp = {"kind": "train", "dataset": "passkey", "task": "passkey",
           "data": {"context": 16, "key_len": 2, "n_train": 64, "n_eval": 4, "multiples": [1, 2]},
           "model": {"name": "decoder", "d": 16, "layers": 1, "heads": 2}, "loss": {"name": "softmax_ce"},
           "optimizer": {"name": "adamw", "lr": 0.01}, "batch_size": 8, "steps": 6, "log_every": 3, "eval_every": 3}
    metrics, steps, _ = train(exp, 0, tmp_path, repo_root(), progress=False, log=lambda m: None)
    assert {"passkey_acc_x1", "passkey_acc_x2", "passkey_key_attn_x2", "final_attn_logit_max_l0"} <= set(metrics)
    assert math.isfinite(metrics["train_loss_final"]) and metrics["diverged"] == 0.0
    assert list(steps["step"]) == [3, 6] and steps["passkey_acc_x1"].notna().all()
    # an untrained-ish model's answer loss is near log 10 .. log V, not the loss over the filler
    assert 1.0 < metrics["passkey_loss_x1"] < 4.0
