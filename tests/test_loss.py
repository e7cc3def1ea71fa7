"""The SCAN loss against values computed by hand (numpy), so a reversed KL, a missing T^2, a wrong
ramp or a hint that is not a mean all fail."""

import math

import numpy as np
import pytest
import torch

from scan_cli.training.recipes import Recipe
from scan_cli.training.loss import kd_weight, scan_loss

Z_STUDENT = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5]])
Z_TEACHER = np.array([[0.5, 1.5, 0.0], [1.0, -0.5, 0.2]])
LABELS = np.array([1, 2])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ce(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


def _kl_teacher_student(zs, zt, T):
    """KL(p_teacher || p_student) at temperature T, averaged over the batch."""
    ps, pt = _softmax(zs / T), _softmax(zt / T)
    return float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)))


def _loss(recipe, progress=1.0, features=None):
    logits = [torch.tensor(Z_STUDENT, dtype=torch.float64), torch.tensor(Z_TEACHER, dtype=torch.float64)]
    loss, _ = scan_loss(logits, features, torch.tensor(LABELS), recipe, progress)
    return float(loss)


def test_kd_term_is_t_squared_kl_from_the_teacher():
    lam, T = 0.5, 3.0
    r = Recipe(loss="paper", kd_lambda=lam, temperature=T, feature_hint=False, exit_weights=[1.0])
    expected = _ce(Z_TEACHER, LABELS) + (1 - lam) * _ce(Z_STUDENT, LABELS) + lam * T * T * _kl_teacher_student(Z_STUDENT, Z_TEACHER, T)
    assert _loss(r) == pytest.approx(expected, rel=1e-9)
    # the direction matters: KL(student || teacher) would change the loss far beyond the tolerance
    reversed_kl = float(np.mean(np.sum(_softmax(Z_STUDENT / T) * (np.log(_softmax(Z_STUDENT / T)) - np.log(_softmax(Z_TEACHER / T))), -1)))
    assert lam * T * T * abs(reversed_kl - _kl_teacher_student(Z_STUDENT, Z_TEACHER, T)) > 1e-3 * expected


def test_exit_weight_scales_the_whole_shallow_term():
    lam, T, w = 0.3, 2.0, 0.25
    r = Recipe(loss="paper", kd_lambda=lam, temperature=T, feature_hint=False, exit_weights=[w])
    shallow = (1 - lam) * _ce(Z_STUDENT, LABELS) + lam * T * T * _kl_teacher_student(Z_STUDENT, Z_TEACHER, T)
    assert _loss(r) == pytest.approx(_ce(Z_TEACHER, LABELS) + w * shallow, rel=1e-9)


def test_kd_ramp_is_linear_then_flat():
    r = Recipe(kd_lambda=0.5, kd_ramp=0.4)
    assert kd_weight(r, 0.0) == 0.0
    assert kd_weight(r, 0.2) == pytest.approx(0.25)
    assert kd_weight(r, 0.4) == pytest.approx(0.5) and kd_weight(r, 0.9) == pytest.approx(0.5)
    assert kd_weight(Recipe(kd=False), 0.9) == 0.0
    # at the start of the ramp the shallow exit learns from the labels only
    start = Recipe(kd_lambda=0.5, kd_ramp=0.4, feature_hint=False, exit_weights=[1.0])
    assert _loss(start, progress=0.0) == pytest.approx(_ce(Z_TEACHER, LABELS) + _ce(Z_STUDENT, LABELS), rel=1e-9)


def test_hint_is_a_mean_squared_error_towards_the_detached_last_feature():
    f_s = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    f_t = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    r = Recipe(kd=False, feature_hint=True, hint_weight=0.5, exit_weights=[1.0])
    base = _ce(Z_TEACHER, LABELS) + _ce(Z_STUDENT, LABELS)
    mse = float(np.mean((f_s.detach().numpy() - f_t.detach().numpy()) ** 2))
    logits = [torch.tensor(Z_STUDENT), torch.tensor(Z_TEACHER)]
    loss, _ = scan_loss(logits, [f_s, f_t], torch.tensor(LABELS), r)
    assert float(loss) == pytest.approx(base + 0.5 * mse, rel=1e-9)
    loss.backward()
    assert f_t.grad is None or torch.count_nonzero(f_t.grad) == 0  # the target is detached
    assert torch.allclose(f_s.grad, 0.5 * 2 * (f_s - f_t).detach() / f_s.numel())


def test_teacher_gets_only_its_own_cross_entropy_gradient():
    zs = torch.tensor(Z_STUDENT, requires_grad=True)
    zt = torch.tensor(Z_TEACHER, requires_grad=True)
    loss, _ = scan_loss([zs, zt], None, torch.tensor(LABELS), Recipe(kd_lambda=1.0, feature_hint=False))
    loss.backward()
    ref = torch.tensor(Z_TEACHER, requires_grad=True)
    torch.nn.functional.cross_entropy(ref, torch.tensor(LABELS)).backward()
    assert torch.allclose(zt.grad, ref.grad)
    assert math.isfinite(float(loss))


# -- "say when something is off": an earlier exit beating the last one ------------------------------
def _exit_logits(right_matrix):
    """[n, K, 2] logits whose argmax is the label (0) exactly where right_matrix is True."""
    r = torch.as_tensor(right_matrix, dtype=torch.bool)
    logits = torch.zeros(*r.shape, 2)
    logits[..., 0] = torch.where(r, 1.0, -1.0)
    return logits, torch.zeros(r.shape[0], dtype=torch.long)


def test_warns_when_an_earlier_exit_beats_the_last_beyond_noise():
    from scan_cli.exit_outputs import exit_order_warning, exits_beating_last

    n = 200
    right = np.ones((n, 3), dtype=bool)
    right[:30, 2] = False  # the last exit misses 30 that exit 1 gets
    right[30:35, 0] = False  # exit 1 misses 5 the last gets
    right[:, 1] = right[:, 2]
    logits, labels = _exit_logits(right)
    found = exits_beating_last(logits, labels)
    assert [f["exit"] for f in found] == [1] and (found[0]["only_this"], found[0]["only_last"]) == (30, 5)
    line = exit_order_warning(logits, labels)
    assert "exit 1/3" in line and "--max-drop" in line and "--weights FILE --mode heads" in line


def test_the_warning_never_advises_the_mode_the_run_was_trained_in():
    from scan_cli.exit_outputs import exit_order_warning

    right = np.ones((200, 3), dtype=bool)
    right[:30, 2] = False  # exit 1 beats the last beyond noise
    line = exit_order_warning(*_exit_logits(right), mode="heads")  # already on a trained backbone
    assert "exit 1/3" in line and "--mode heads" not in line and "--mode joint" in line
    assert "--weights FILE --mode heads" in exit_order_warning(*_exit_logits(right), mode="joint")


def test_no_warning_within_noise():
    from scan_cli.exit_outputs import exit_order_warning

    right = np.ones((200, 2), dtype=bool)
    right[:6, 1] = False  # 6 vs 3: b - c = 3 < 2 * sqrt(9)
    right[6:9, 0] = False
    assert exit_order_warning(*_exit_logits(right)) is None


def test_ensemble_teacher_also_teaches_the_deepest_exit():
    lam, T = 0.4, 2.0
    r = Recipe(kd_lambda=lam, temperature=T, kd_teacher="ensemble", feature_hint=False, exit_weights=[0.5], last_weight=2.0)
    teacher = (Z_STUDENT + Z_TEACHER) / 2

    def term(z):
        return (1 - lam) * _ce(z, LABELS) + lam * T * T * _kl_teacher_student(z, teacher, T)

    assert _loss(r) == pytest.approx(2.0 * term(Z_TEACHER) + 0.5 * term(Z_STUDENT), rel=1e-9)
