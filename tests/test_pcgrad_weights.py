"""PCGrad's surgery coefficients are not loss weights: results tables must not show them as such."""
import torch

from auxilearn_hpo.baselines import PCGrad
from auxilearn_hpo.tasks import make_task
from auxilearn_hpo.integrations.trial import Trial
from auxilearn_hpo.results import trials_frame


def _nearly_cancelling_call(w):
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    # g_main = (1, 0), g_aux = (-1e-3, 1e-4): conflicting and 1000x smaller, so the coefficient is huge.
    grads = torch.tensor([[1.0, 0.0], [-1e-3, 1e-4]], dtype=torch.float64)
    losses = (theta.unsqueeze(0) @ grads.T)  # (1, 2): one sample, two task losses
    w.backward(losses, [theta])
    return theta


def test_coefficients_are_named_apart_from_the_loss_weights():
    w = PCGrad(2, task_names=["main", "aux"]).double()
    _nearly_cancelling_call(w)
    coefficients = w.effective_coefficients()
    # The gradient coefficients of this batch are large; the loss weights stay 1 (PCGrad sums the losses).
    assert max(coefficients.values()) > 900
    assert w.effective_weights() == {"main": 1.0, "aux": 1.0}


def test_pcgrad_trials_report_loss_weights_of_one():
    trial = Trial("toy", {"weighting": "pcgrad", "epochs": 2, "seed": 0})
    reports = [r.flat() for r in trial.reports()]
    weights = {k: v for k, v in reports[-1].items() if k.startswith("weights/")}
    # Before: the weights/<task> columns held the last batch's surgery coefficients (up to 3e5 on digits).
    assert weights == {"weights/main": 1.0, "weights/helpful": 1.0, "weights/harmful": 1.0}
    frame = trials_frame([("0", {"weighting": "pcgrad", "epochs": 2}, reports)])
    assert frame.filter(like="weights/").iloc[0].tolist() == [1.0, 1.0, 1.0]


def test_toy_task_names():
    assert list(make_task("toy", seed=0).task_names) == ["main", "helpful", "harmful"]
