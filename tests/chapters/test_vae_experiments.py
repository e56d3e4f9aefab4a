"""The VAE experiments: monitors, the authors' coded variant (MSE, SGD + Adam), and findings computed
from evidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neuroage_utils import metrics
from neuroage_utils.chapters import vae_experiments
from neuroage_utils.nn.likelihoods import MSEReconstruction, make_likelihood
from neuroage_utils.nn.networks import AgeVAE
from neuroage_utils.train.loop import _optimizers

from tests.models.test_vae import _counts, _fast

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _split(X, ages, donors, n_train_donors=6):
    train = np.isin(donors, np.unique(donors)[:n_train_donors])
    return (X[train], ages[train], donors[train]), (X[~train], ages[~train], donors[~train])


# -- monitors -----------------------------------------------------------------------------------------


def test_monitors_record_training_and_validation_donor_mae_without_changing_the_run():
    X, ages, donors = _counts(n_donors=9, cells=20)
    (Xt, at, dt), (Xv, av, dv) = _split(X, ages, donors)
    plain = _fast(likelihood="poisson", epochs=4).fit(Xt, at, donors=dt)
    watched = _fast(likelihood="poisson", epochs=4).fit(Xt, at, donors=dt,
                                                      monitors={"train": (Xt, at, dt), "val": (Xv, av, dv)})
    h = watched.history_
    assert {"train_mae", "val_mae", "monitor_seconds"} <= set(h.columns) and len(h) == 4
    # one value per epoch, and the last one is the donor-level MAE of the fitted model on those donors
    for name, (Xs, a, d) in {"train": (Xt, at, dt), "val": (Xv, av, dv)}.items():
        table = metrics.donor_table(watched.predict(Xs), d, a)
        assert h[f"{name}_mae"].iloc[-1] == pytest.approx(metrics.donor_metrics(table)["mae"], rel=1e-6)
    assert h["train_mae"].nunique() > 1  # it moves with training: recorded every epoch, not copied
    # monitoring only reads the model: the same losses and the same predictions
    np.testing.assert_allclose(plain.history_["loss"], h["loss"], rtol=0, atol=0)
    np.testing.assert_array_equal(plain.predict(Xv), watched.predict(Xv))


def test_monitor_named_val_cannot_overwrite_the_validation_columns():
    X, ages, donors = _counts(n_donors=6, cells=10)
    (Xt, at, dt), (Xv, av, dv) = _split(X, ages, donors, 4)
    with pytest.raises(ValueError, match="overwrite"):
        _fast(epochs=1).fit(Xt, at, donors=dt, validation=(Xv, av, dv), monitors={"val": (Xv, av, dv)})


# -- the authors' coded variant ------------------------------------------------------------------------


def test_mse_reconstruction_is_the_summed_squared_error():
    x, out = torch.rand(5, 7), torch.randn(5, 7)
    lik = make_likelihood("mse", 7)
    assert isinstance(lik, MSEReconstruction) and not lik.is_count
    expected = torch.nn.MSELoss(reduction="sum")(out[0], x[0])
    assert lik.nll(x, out)[0] == pytest.approx(float(expected), rel=1e-6)


def test_authors_optimisers_sgd_for_the_autoencoder_adam_for_the_age_head():
    module = AgeVAE(12, hidden=(8,), latent=3, age_hidden=(4,), likelihood="mse")
    sgd, adam = _optimizers(module, "authors", 1e-3, 0.0)
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    in_adam = {id(p) for g in adam.param_groups for p in g["params"]}
    head = {id(p) for p in module.age_head.parameters()}
    assert in_adam == head and not in_sgd & in_adam
    assert in_sgd | in_adam == {id(p) for p in module.parameters()}
    # one step of each: SGD moves exactly lr * grad (no momentum, no Adam state), Adam the head only
    batch = {"x": torch.poisson(torch.full((16, 12), 2.0)), "y": torch.randn(16)}
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    module.loss(batch, 1.0)["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    sgd.step()
    for n, p in module.named_parameters():
        if n.startswith("age_head"):
            assert torch.equal(p, before[n])  # not touched by SGD
        else:
            torch.testing.assert_close(p.detach(), before[n] - 1e-3 * grads[n])
    assert not adam.state  # Adam has not stepped yet
    adam.step()
    assert set(adam.state) and all(id(p) in head for p in adam.state)


@pytest.mark.parametrize("likelihood,optimizer", [("mse", "authors"), ("mse", "adam"), ("poisson", "authors")])
def test_coded_variant_trains(likelihood, optimizer):
    X, ages, donors = _counts(n_donors=6, cells=20)
    model = _fast(likelihood=likelihood, optimizer=optimizer, epochs=8, lr=1e-2, kl_schedule=None,
                  lr_schedule=None).fit(X, ages, donors=donors)
    loss = model.history_["loss"]
    assert loss.iloc[-1] < loss.iloc[0]
    before = AgeVAE(X.shape[1], hidden=(16, 8), latent=4, age_hidden=(8,), likelihood=likelihood)
    assert model.module_.likelihood.__class__ is before.likelihood.__class__
    assert np.isfinite(model.predict(X)).all()


def test_unknown_optimiser_is_refused():
    X, ages, donors = _counts(n_donors=4, cells=10)
    with pytest.raises(ValueError, match="unknown optimizer"):
        _fast(optimizer="rmsprop", epochs=1).fit(X, ages, donors=donors)


def test_step_budgets_are_computed_from_data():
    assert vae_experiments.step_budget(1000, 128, 3) == 8 * 3
    paper_budget = vae_experiments.paper_step_budget(("train", "val", "test"))
    assert paper_budget["cells"] == 189_423 and paper_budget["steps"] == 47 * 1000


# -- findings follow the evidence ----------------------------------------------------------------------

_DONORS = [f"V{i}" for i in range(10)]
_AGES = np.linspace(25, 90, 10)


def _entry(errors, seed=0):
    """A validation entry whose donors are missed by ``errors`` years (signed)."""
    table = metrics.donor_table(_AGES + np.asarray(errors, float), _DONORS, _AGES)
    return metrics.model_entry(table, "val", seed=seed)


def _evidence(memorise: bool, train_null_mae: float | None = None):
    rng = np.random.default_rng(1)
    null_err = _AGES.mean() - _AGES  # the null: everybody the mean age
    noise = rng.normal(0, 0.3, 10)
    if memorise:  # every VAE run about the null on new donors, small errors on its training donors
        runs = {"vae_poisson_t3_m2": null_err + noise, "vae_exp_steps": null_err * 1.02 + noise,
                "vae_exp_age_w100": null_err * 1.01 - noise, "vae_exp_coded": null_err + 0.5 * noise}
        train = {"vae_poisson_t3_m2": 11.0, "vae_exp_steps": 8.0, "vae_exp_age_w100": 3.0, "vae_exp_coded": 11.5}
        probes = {"probe_vae_latent": null_err * 1.1, "probe_svd": null_err * 0.5, "probe_nmf": null_err * 0.5}
    else:  # more steps and the latent probe both predict well; nothing memorised
        runs = {"vae_poisson_t3_m2": null_err + noise, "vae_exp_steps": 0.2 * null_err + noise,
                "vae_exp_age_w100": null_err * 0.98 - noise, "vae_exp_coded": 0.3 * null_err + noise}
        train = {"vae_poisson_t3_m2": 12.0, "vae_exp_steps": 4.0, "vae_exp_age_w100": 11.0, "vae_exp_coded": 5.0}
        probes = {"probe_vae_latent": 0.1 * null_err + noise, "probe_svd": null_err * 0.8, "probe_nmf": null_err * 0.9}
    models = {k: _entry(v) for k, v in {**runs, **probes}.items()}
    models["null_val"] = _entry(null_err)
    kinds = {"vae_poisson_t3_m2": ("table3", 1.0, 210), "vae_exp_steps": ("steps", 1.0, 810),
             "vae_exp_age_w100": ("age_weight", 100.0, 210), "vae_exp_coded": ("coded", 1.0, 210)}
    meta = {k: {"experiment": k, "kind": kind, "epochs": 30, "batch_size": 256, "steps": steps, "age_weight": w,
                "train_mae": train[k]} for k, (kind, w, steps) in kinds.items()}
    meta.update({k: {"experiment": k, "kind": "probe"} for k in probes})
    table = vae_experiments.experiment_table(models, meta, train_null_mae=train_null_mae)
    comparisons = vae_experiments.paired_comparisons(
        models, [(k, "vae_poisson_t3_m2") for k in runs if k != "vae_poisson_t3_m2"]
        + [("probe_vae_latent", "probe_svd"), ("probe_vae_latent", "probe_nmf")])
    return table, comparisons


def test_findings_follow_the_evidence():
    mem_table, mem_cmp = _evidence(memorise=True)
    good_table, good_cmp = _evidence(memorise=False)
    mem = vae_experiments.findings(mem_table, mem_cmp, paper_steps=33_000)
    good = vae_experiments.findings(good_table, good_cmp, paper_steps=33_000)
    assert mem != good
    mem_text, good_text = " ".join(mem), " ".join(good)
    # memorising evidence: training error far below validation, nothing beats the null, steps do not help
    assert "learns those donors rather than age" in mem[-1]
    assert "under-training is not the explanation" in mem[-1]
    assert "beat the null" in mem[1] and "vae_" not in mem[1].split(";")[0]  # only the linear probes beat it
    assert "left the validation MAE where it was" in mem_text and "raised the validation MAE" in mem_text
    assert "linear factorisations of the same cells hold more age signal" in mem[-1]
    assert "do not rescue the model" in mem[-1]
    # evidence where more steps and the coded variant help, and the latent probe beats the others
    assert "the runs are under-trained" in good[-1]
    assert "learns those donors rather than age" not in good_text and "so they learnt some age" in good[-1]
    assert "lowered the validation MAE" in good_text and "excludes zero" in good_text
    assert "and more than SVD and NMF features hold" in good[-1]
    assert "do better on these data" in good[-1]
    # the numbers in the sentences are the table's
    steps_row = good_table.set_index("key").loc["vae_exp_steps"]
    assert f"{steps_row['val_mae']:.2f}" in good_text and "810" in good_text and "33,000" in good_text


def test_underfitting_at_the_paper_settings_is_read_from_the_training_null():
    # the same runs; only the null's error on the training donors differs
    near, _ = _evidence(memorise=True, train_null_mae=12.0)  # the Table 3 run misses its donors by 11
    far, cmp = _evidence(memorise=True, train_null_mae=18.0)
    said_near = vae_experiments.findings(near, cmp)
    said_far = vae_experiments.findings(far, cmp)
    assert "barely shapes the model" in said_near[-1] and "about as much as the null model does (12.00)" in " ".join(said_near)
    assert "barely shapes the model" not in said_far[-1] and "well below the null model does (18.00)" in " ".join(said_far)
    unknown = vae_experiments.findings(_evidence(memorise=True)[0], cmp)
    assert "barely shapes" not in " ".join(unknown)


def test_experiment_table_puts_the_null_last_with_paired_differences():
    table, _ = _evidence(memorise=True)
    assert table.iloc[-1]["kind"] == "null"
    row = table.set_index("key").loc["vae_exp_steps"]
    assert row["vs_null_lo"] <= row["vs_null"] <= row["vs_null_hi"]
    shown = vae_experiments.display_table(table)
    assert len(shown) == len(table) and "validation MAE" in shown.columns
    assert isinstance(pd.DataFrame(shown), pd.DataFrame)
