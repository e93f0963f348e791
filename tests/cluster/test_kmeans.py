"""KMeans against scikit-learn, gradient descent against Lloyd, and the edge cases."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score

import gradwise as gw
from gradwise.cluster import KMeans, _assign
from gradwise.errors import ArgumentError, ArgumentTypeError


def blobs(n=1500, d=5, centers=6, std=1.0, seed=0):
    return make_blobs(n, d, centers=centers, cluster_std=std, random_state=seed)


def first_rows_init(X, k, seed=0):
    return X[np.random.RandomState(seed).choice(len(X), k, replace=False)]


@pytest.mark.parametrize("data", ["blobs", "digits"])
def test_lloyd_matches_scikit_learn_from_the_same_init(data):
    X = blobs()[0] if data == "blobs" else load_digits().data.astype(np.float64)
    init = first_rows_init(X, 10)
    ref = SKKMeans(10, init=init, n_init=1).fit(X)
    ours = KMeans(10, init=torch.tensor(init)).fit(X)
    assert np.array_equal(ours.labels_.numpy(), ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-4)
    np.testing.assert_allclose(ours.cluster_centers_.numpy(), ref.cluster_centers_, rtol=1e-6, atol=1e-8)
    assert ours.n_iter_ == ref.n_iter_


def test_numpy_input_gives_tensors_and_predict_equals_labels():
    X, _ = blobs()
    km = KMeans(6, random_state=0).fit(X)
    assert isinstance(km.cluster_centers_, torch.Tensor) and km.cluster_centers_.dtype == torch.float64
    assert torch.equal(km.predict(X), km.labels_)
    assert torch.equal(KMeans(6, random_state=0).fit_predict(X), km.labels_)
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-12)
    distances = km.transform(X)
    ref = np.linalg.norm(X[:, None, :] - km.cluster_centers_.numpy()[None], axis=2)
    np.testing.assert_allclose(distances.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_well_separated_blobs_are_recovered_exactly():
    X, y = blobs(centers=5, std=0.3, seed=3)
    for seed in range(3):
        km = KMeans(5, random_state=seed).fit(torch.tensor(X, dtype=torch.float32))
        assert adjusted_rand_score(y, km.labels_.numpy()) == 1.0, seed


def test_random_init_draws_distinct_rows_by_weight():
    from gradwise.cluster import _init
    from gradwise.cluster._distributed import Comm

    X = torch.arange(40.0).reshape(20, 2)
    w = torch.ones(20)
    w[:10] = 0  # never drawn
    rows = _init.random_rows("test", Comm("test", False, 1.0), X, w, 6, seed=0)
    index = (rows[:, 0] / 2).long()
    assert len(set(index.tolist())) == 6 and (index >= 10).all()
    assert torch.equal(rows, X[index])


def test_kmeans_plusplus_quality_is_on_par_with_scikit_learn():
    """Same algorithm, different random streams: compare the mean inertia over seeds."""
    X = load_digits().data.astype(np.float64)
    ours = np.mean([KMeans(10, random_state=s, max_iter=1, tol=0).fit(X).inertia_ for s in range(5)])
    ref = np.mean([SKKMeans(10, n_init=1, random_state=s, max_iter=1, tol=0).fit(X).inertia_ for s in range(5)])
    assert ours < ref * 1.05


def test_float32_and_float64_agree():
    X, _ = blobs(d=8)
    init = torch.tensor(first_rows_init(X, 6))
    a = KMeans(6, init=init).fit(torch.tensor(X))
    b = KMeans(6, init=init.float()).fit(torch.tensor(X, dtype=torch.float32))
    assert b.inertia_ == pytest.approx(a.inertia_, rel=1e-4)
    assert b.cluster_centers_.dtype == torch.float32


def test_weights_behave_like_repeated_samples():
    X, _ = blobs(n=300)
    w = np.random.RandomState(0).randint(1, 4, size=len(X))
    init = torch.tensor(first_rows_init(X, 4))
    weighted = KMeans(4, init=init).fit(X, sample_weight=torch.tensor(w, dtype=torch.float64))
    repeated = KMeans(4, init=init).fit(np.repeat(X, w, axis=0))
    torch.testing.assert_close(weighted.cluster_centers_, repeated.cluster_centers_)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-10)
    ref = SKKMeans(4, init=init.numpy(), n_init=1).fit(X, sample_weight=w)
    assert weighted.inertia_ == pytest.approx(ref.inertia_, rel=1e-6)


def test_empty_cluster_is_relocated_like_scikit_learn():
    X, _ = blobs(n=400, d=2, centers=3)
    init = np.vstack([first_rows_init(X, 3), [[1e3, 1e3]]])  # the last centre gets no point
    ref = SKKMeans(4, init=init, n_init=1, max_iter=1).fit(X)
    ours = KMeans(4, init=torch.tensor(init), max_iter=1).fit(X)
    assert torch.isfinite(ours.cluster_centers_).all()
    assert np.abs(ours.cluster_centers_.numpy()).max() < 100  # moved into the data, not left far away
    np.testing.assert_allclose(ours.cluster_centers_.numpy(), ref.cluster_centers_, rtol=1e-8, atol=1e-8)
    full = KMeans(4, init=torch.tensor(init)).fit(X)
    assert torch.bincount(full.labels_, minlength=4).min() > 0


def test_random_state_makes_fits_reproducible():
    X, _ = blobs()
    a = KMeans(6, n_init=2, random_state=7).fit(X)
    b = KMeans(6, n_init=2, random_state=7).fit(X)
    assert torch.equal(a.cluster_centers_, b.cluster_centers_) and torch.equal(a.labels_, b.labels_)
    c = KMeans(6, n_init=2, random_state=8).fit(X)
    assert not torch.equal(a.cluster_centers_, c.cluster_centers_)


def test_n_init_keeps_the_best_run():
    X, _ = blobs(centers=8, std=2.0)
    single = [KMeans(8, init="random", random_state=0, n_init=1).fit(X)]
    best = KMeans(8, init="random", random_state=0, n_init=4).fit(X)
    assert best.inertia_ <= single[0].inertia_


def test_gradient_descent_with_newton_rate_is_lloyd_step_by_step():
    X, _ = blobs(n=600)
    X = torch.tensor(X)
    init = X[:6].clone()
    for steps in range(1, 8):
        lloyd = KMeans(6, init=init, max_iter=steps, tol=0).fit(X)
        grad = KMeans(6, init=init, max_iter=steps, tol=0, algorithm="gradient", batch_size=len(X)).fit(X)
        torch.testing.assert_close(grad.cluster_centers_, lloyd.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_gradient_descent_by_hand_with_torch_optim_is_lloyd():
    """The same, written as a user would: autograd through kmeans_loss, SGD, rate 1 / n_k."""
    X, _ = blobs(n=500, d=3, centers=4)
    X = torch.tensor(X)
    centers = torch.nn.Parameter(X[:4].clone())
    opt = torch.optim.SGD([centers], lr=1.0)
    lloyd = X[:4].clone()
    for _ in range(5):
        opt.zero_grad()
        gw.cluster.kmeans_loss(X, centers).backward()
        labels = ((X[:, None] - centers.detach()[None]) ** 2).sum(-1).argmin(1)
        counts = torch.bincount(labels, minlength=4).double()
        centers.grad /= counts[:, None]
        opt.step()
        # Lloyd by hand
        lab = ((X[:, None] - lloyd[None]) ** 2).sum(-1).argmin(1)
        lloyd = torch.stack([X[lab == k].mean(0) for k in range(4)])
        torch.testing.assert_close(centers.detach(), lloyd)


def test_minibatch_gets_close_to_lloyd():
    X, _ = blobs(n=4000, centers=5, std=0.8)
    lloyd = KMeans(5, random_state=0, n_init=3).fit(X)
    mini = KMeans(5, algorithm="minibatch", batch_size=256, random_state=0, n_init=3).fit(X)
    grad = KMeans(5, algorithm="gradient", batch_size=256, random_state=0, n_init=3).fit(X)
    assert mini.inertia_ < lloyd.inertia_ * 1.05
    assert grad.inertia_ < lloyd.inertia_ * 1.05


def test_minibatch_reassigns_starved_centres():
    X, _ = blobs(n=2000, d=2, centers=4, std=0.5)
    init = np.vstack([first_rows_init(X, 3), [[500.0, 500.0]]])
    km = KMeans(4, init=torch.tensor(init), algorithm="minibatch", batch_size=100, random_state=0).fit(X)
    assert np.abs(km.cluster_centers_.numpy()).max() < 100
    assert torch.bincount(km.labels_, minlength=4).min() > 0


def test_chunked_assignment_equals_the_full_matrix(monkeypatch):
    X = torch.randn(1000, 7, dtype=torch.float64)
    C = torch.randn(13, 7, dtype=torch.float64)
    full = torch.cdist(X, C) ** 2
    monkeypatch.setattr(_assign, "CHUNK_BYTES", 13 * 8 * 37)  # 37 rows per chunk
    assert _assign.chunk_rows(13, 8) == 37
    labels, sq, sums, counts = _assign.assign(X, C, shift=X.mean(0), sums=True)
    assert torch.equal(labels, full.argmin(1))
    torch.testing.assert_close(sq, full.min(1).values)
    for k in range(13):
        torch.testing.assert_close(counts[k], (labels == k).sum().double())
        torch.testing.assert_close(sums[k], (X[labels == k] - X.mean(0)).sum(0))


def test_kmeans_loss_gradients_by_hand():
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 1.0]], dtype=torch.float64, requires_grad=True)
    C = torch.tensor([[1.0, 0.0], [9.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    loss = gw.cluster.kmeans_loss(X, C, sample_weight=w)
    assert loss.item() == pytest.approx(0.5 * (1 * 1 + 2 * 1 + 3 * 2))
    loss.backward()
    torch.testing.assert_close(
        C.grad, torch.tensor([[3.0 * 1 - (0 + 4), 0.0], [3.0 * 9 - 30, -3.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(X.grad, torch.tensor([[-1.0, 0], [2.0, 0], [3.0, 3.0]], dtype=torch.float64))
    mean = gw.cluster.kmeans_loss(X.detach(), C.detach(), sample_weight=w, reduction="mean")
    assert mean.item() == pytest.approx(loss.item() / 6)


def test_soft_assignment_and_layer():
    X = torch.randn(20, 3, dtype=torch.float64)
    C = torch.randn(4, 3, dtype=torch.float64)
    soft = gw.cluster.soft_kmeans_assign(X, C, tau=0.7)
    ref = torch.softmax(-(torch.cdist(X, C) ** 2) / 0.7, -1)
    torch.testing.assert_close(soft, ref)
    hard = gw.cluster.soft_kmeans_assign(X, C, tau=1e-4)
    torch.testing.assert_close(hard.argmax(1), torch.cdist(X, C).argmin(1))
    layer = gw.cluster.SoftKMeans(4, 3, tau=0.5)
    weights, recon = layer(X.float())
    recon.sum().backward()
    assert layer.centers.grad is not None and weights.shape == (20, 4)
    assert repr(layer) == "SoftKMeans(n_clusters=4, n_features=3, tau=0.5)"


def test_verbose_prints_progress(capsys):
    X, _ = blobs(n=300)
    KMeans(3, random_state=0, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "KMeans: iteration 0, inertia" in err and "center shift" in err


def test_bad_input():
    X = torch.randn(20, 3)
    with pytest.raises(
        ArgumentError, match=r"KMeans.fit: n_clusters=5 exceeds the number of distinct points in X \(2\)"
    ):
        KMeans(5).fit(torch.tensor([[0.0, 1.0], [2.0, 3.0]] * 5))
    with pytest.raises(ArgumentError, match=r"n_clusters=30 exceeds the number of samples \(20\)"):
        KMeans(30).fit(X)
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ArgumentError, match=r"KMeans.fit: X must be finite \(got nan at X\[3, 1\]\)"):
        KMeans(2).fit(bad)
    bad[3, 1] = float("inf")
    with pytest.raises(ArgumentError, match="X must be finite"):
        KMeans(2).fit(bad)
    with pytest.raises(
        ArgumentError, match=r"KMeans.fit: X must be 2-D \(n_samples, n_features\) \(got shape \(20,\)\)"
    ):
        KMeans(2).fit(torch.randn(20))
    with pytest.raises(ArgumentError, match=r"KMeans.fit: X is empty"):
        KMeans(2).fit(torch.empty(0, 3))
    km = KMeans(2, random_state=0).fit(X)
    with pytest.raises(ArgumentError, match=r"KMeans.predict: X has 4 features but the KMeans was fitted on 3"):
        km.predict(torch.randn(5, 4))
    with pytest.raises(ArgumentError, match="not fitted yet"):
        KMeans(2).predict(X)
    with pytest.raises(ArgumentTypeError, match=r"X has dtype torch.int64; pass dtype=torch.float32"):
        KMeans(2).fit(torch.arange(20).reshape(10, 2))
    assert KMeans(2, dtype=torch.float32, random_state=0).fit(torch.arange(20).reshape(10, 2)).inertia_ > 0
    with pytest.raises(ArgumentError, match="KMeans: algorithm must be one of 'lloyd', 'minibatch', 'gradient'"):
        KMeans(2, algorithm="elkan").fit(X)  # checked when used, as scikit-learn does
    with pytest.raises(ArgumentError, match=r"init must have shape \(n_clusters=2, n_features\)"):
        KMeans(2, init=torch.randn(3, 3)).fit(X)
    with pytest.raises(ArgumentError, match=r"KMeans: device must name a torch device .* \(got 'nonsense'\)"):
        KMeans(2, device="nonsense").fit(X)
    with pytest.raises(ArgumentError, match=r"KMeans: n_clusters must be >= 1 \(got 0\)"):
        KMeans(2).set_params(n_clusters=0).fit(X)
    with pytest.raises(ArgumentError, match=r"sample_weight must have shape \(20,\)"):
        KMeans(2).fit(X, sample_weight=torch.ones(5))
    with pytest.raises(ArgumentError, match="sample_weight must be finite and >= 0"):
        KMeans(2).fit(X, sample_weight=-torch.ones(20))
    with pytest.raises(ArgumentError, match=r"KMeans.fit: sample_weight must have a positive entry \(got all zeros\)"):
        KMeans(2).fit(X, sample_weight=torch.zeros(20))
    with pytest.raises(ArgumentTypeError, match=r"KMeans.fit: sample_weight must be a tensor or array-like of numbers"):
        KMeans(2).fit(X, sample_weight="uniform")
    with pytest.raises(ArgumentError, match=r"distributed=True needs an initialised torch.distributed process group"):
        KMeans(2).fit(X, distributed=True)


def test_repr():
    assert repr(KMeans(8, algorithm="minibatch", random_state=3)) == "KMeans(8, algorithm='minibatch', random_state=3)"


def test_scikit_learn_estimator_contract():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    init = torch.randn(3, 2)
    km = KMeans(3, init=init, max_iter=50, random_state=1)
    params = km.get_params()
    assert params["init"] is init and params["n_clusters"] == 3 and params["max_iter"] == 50
    shared = {"n_clusters", "init", "n_init", "max_iter", "tol", "algorithm", "random_state", "verbose"}
    assert shared <= set(params) and shared <= set(sklearn.cluster.KMeans().get_params())  # scikit-learn's names
    copy = clone(km)  # scikit-learn checks that the constructor stored every argument as given
    assert copy is not km and copy.get_params()["max_iter"] == 50 and torch.equal(copy.init, init)
    assert km.set_params(max_iter=7) is km and km.max_iter == 7
    with pytest.raises(
        ArgumentError, match=r"KMeans.set_params: no parameter 'n_cluster' \(the parameters are n_clusters"
    ):
        km.set_params(n_cluster=2)
    assert KMeans(0).n_clusters == 0  # the constructor does not check (fit does)

    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(40, 2, generator=g) + c for c in (-6.0, 0.0, 6.0)]).double()
    fitted = KMeans(3, random_state=0).fit(X)
    again = KMeans(3, random_state=0).fit_transform(X)
    assert torch.allclose(again, fitted.transform(X)) and again.shape == (120, 3)

    search = GridSearchCV(KMeans(2, random_state=0), {"n_clusters": [2, 3, 4]}, cv=3).fit(X.numpy())
    assert search.best_params_["n_clusters"] in (3, 4)  # score is -inertia: more clusters never score worse
    assert [p["n_clusters"] for p in search.cv_results_["params"]] == [2, 3, 4]
    pipe = make_pipeline(StandardScaler(), KMeans(3, random_state=0)).fit(X.numpy())
    assert len(set(pipe.predict(X.numpy()).tolist())) == 3


def test_minibatch_n_iter_counts_passes_and_an_explicit_init_runs_once():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 3, generator=g)
    km = KMeans(4, algorithm="minibatch", batch_size=100, max_iter=3, tol=0.0, random_state=0).fit(X)
    assert 1 <= km.n_iter_ <= 3  # passes over the data, as max_iter counts them (20 batches each)
    with pytest.warns(RuntimeWarning, match=r"explicit initial centres passed .* instead of n_init=3") as record:
        KMeans(2, init=X[:2].clone(), n_init=3).fit(X)
    assert record[0].filename == __file__


def test_random_init_with_many_repeated_rows():
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(30, 2, generator=g)
    X = torch.cat([distinct[:1].expand(970, 2), distinct])  # 1000 rows, 30 distinct (one repeated 971 times)
    km = KMeans(20, init="random", random_state=0, max_iter=5).fit(X)
    assert torch.unique(km.cluster_centers_, dim=0).shape[0] == 20
    with pytest.raises(ArgumentError, match=r"init='random' needs n_clusters=40 distinct points .* X has 30"):
        KMeans(40, init="random", random_state=0).fit(X)
